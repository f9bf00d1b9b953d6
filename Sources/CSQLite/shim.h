#include <sqlite3.h>

/// SQLite's multi-thread mode (no mutex per connection: GRDB lets one thread
/// at a time use a connection) without memory statistics (a global mutex
/// around every allocation, for figures nobody reads). Saves locks in every
/// bind, step and reset. Takes effect only before SQLite is first used in
/// the process; returns SQLITE_OK then, SQLITE_MISUSE after.
static inline int fanout_sqlite_configure_threading(void) {
    int mode = sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
    int memstatus = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    return mode != SQLITE_OK ? mode : memstatus;
}
