#ifndef CSQLITEBASELINE_H
#define CSQLITEBASELINE_H

/// What fanoutd's store does to the tasks table, done bare through SQLite's C API:
/// no Swift, no GRDB, no scheduler, no events. See SQLiteBaseline.swift.
typedef struct {
    double insert_seconds;        // BEGIN IMMEDIATE, one batches row, `rows` task rows, COMMIT
    double update_seconds;        // every row marked completed, `rows_per_transaction` per transaction
    int update_transactions;
    char error[256];              // set when the call returns non-zero
} fanout_sqlite_baseline;

/// Copies the schema of fanoutd's database `source` (which may be open in a
/// running daemon) into a new file `path` with VACUUM INTO, opens it with
/// fanoutd's pragmas, and times the insert and the update. Returns 0 on success.
int fanout_sqlite_baseline_run(const char *source, const char *path, int rows, int payload_bytes,
                               int rows_per_transaction, fanout_sqlite_baseline *out);

#endif
