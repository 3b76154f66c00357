#include <modbus.h>
#include <errno.h>

/* errno of the calling thread, after a failed libmodbus call. */
static inline int iotc_modbus_errno(void) { return errno; }
