/* A plugin written in C that asks for an ABI version no kernel speaks yet. */
#include "iotc_plugin.h"

static const iotc_plugin descriptor = {
    sizeof(iotc_plugin), 99, "future", "9.0.0", "asks for plugin ABI 99", 0, 0, {0},
};

const iotc_plugin *iotc_plugin_entry(const uint32_t *offered, size_t count) {
    (void)offered;
    (void)count;
    return &descriptor;
}
