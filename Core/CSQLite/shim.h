#include <sqlite3.h>

/// Keeps statement journals in memory however large they grow (SQLite spills them to a temporary file
/// past 64 KiB by default). A multi-row statement within a transaction keeps one, so that it can be
/// undone alone. sqlite3_config is variadic, which Swift cannot call, and takes effect only before
/// the library is initialised (the first connection opened): this returns SQLITE_MISUSE after that.
static inline int iotc_sqlite3_statement_journals_in_memory(void) {
    return sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, -1);
}
