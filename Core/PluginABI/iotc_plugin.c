#include "iotc_plugin.h"

/* Sizes compiled into the kernel, so tests can check that Swift and C agree on the layout. */
size_t iotc_abi_message_size(void) { return sizeof(iotc_message); }
size_t iotc_abi_host_size(void) { return sizeof(iotc_host); }
size_t iotc_abi_component_size(void) { return sizeof(iotc_component); }
