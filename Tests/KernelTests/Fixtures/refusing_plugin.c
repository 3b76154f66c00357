/* A plugin that refuses every ABI version offered. */
#include "iotc_plugin.h"

const iotc_plugin *iotc_plugin_entry(const uint32_t *offered, size_t count) {
    (void)offered;
    (void)count;
    return 0;
}
