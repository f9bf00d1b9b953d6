#include <sqlite3.h>

/// Turns SQLite's memory statistics off: they take a global mutex around
/// every allocation, for figures nobody reads. Takes effect only before
/// SQLite is first used in the process; returns SQLITE_OK then, SQLITE_MISUSE
/// after. (Per-connection mutexes are already off: GRDB opens its connections
/// with SQLITE_OPEN_NOMUTEX.)
static inline int fanout_sqlite_disable_memory_statistics(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
