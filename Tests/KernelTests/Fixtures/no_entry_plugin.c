/* A shared library that is not a plugin: it exports no iotc_plugin_entry. */
int something_else(void) { return 42; }
