#include "CSQLiteBaseline.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(sqlite3 *db, fanout_sqlite_baseline *out, const char *what) {
    snprintf(out->error, sizeof out->error, "%s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
    return 1;
}

static int exec(sqlite3 *db, const char *sql, fanout_sqlite_baseline *out) {
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : fail(db, out, sql);
}

// The bench's echo payload for task `index`: {"n":123,"pad":"xxxx…"} padded to
// `size` bytes, as SizeRun.makeTasks builds it. Returns its length.
static int make_payload(char *buffer, int size, int index) {
    int length = snprintf(buffer, (size_t)size + 32, "{\"n\":%d,\"pad\":\"", index);
    int padding = size - length - 2;
    if (padding > 0) { memset(buffer + length, 'x', (size_t)padding); length += padding; }
    memcpy(buffer + length, "\"}", 2);
    return length + 2;
}

int fanout_sqlite_baseline_run(const char *source, const char *path, int rows, int payload_bytes,
                               int rows_per_transaction, fanout_sqlite_baseline *out) {
    memset(out, 0, sizeof *out);
    sqlite3 *db = NULL;
    sqlite3_stmt *insert = NULL, *update = NULL;
    char *payload = malloc((size_t)payload_bytes + 64);
    int status = 1;
    if (!payload) return fail(NULL, out, "payload");
    if (rows_per_transaction < 1) rows_per_transaction = 1;

    // The schema, exactly as fanoutd's migrations left it, from its own file.
    if (sqlite3_open(source, &db) != SQLITE_OK) { fail(db, out, "open source"); goto done; }
    char *vacuum = sqlite3_mprintf("VACUUM INTO %Q", path);
    int vacuumed = sqlite3_exec(db, vacuum, NULL, NULL, NULL);
    sqlite3_free(vacuum);
    if (vacuumed != SQLITE_OK) { fail(db, out, "VACUUM INTO"); goto done; }
    sqlite3_close(db);
    db = NULL;

    // fanoutd's connection set-up: GRDB's WAL mode (journal_mode=WAL, synchronous=NORMAL),
    // GRDB's foreign_keys=ON (tasks.batch_id REFERENCES batches), and SQLiteStore's
    // synchronous=NORMAL for durability "normal" and journal_size_limit of 64 MB.
    if (sqlite3_open(path, &db) != SQLITE_OK) { fail(db, out, "open"); goto done; }
    if (exec(db, "PRAGMA journal_mode = WAL", out) || exec(db, "PRAGMA synchronous = NORMAL", out)
        || exec(db, "PRAGMA foreign_keys = ON", out) || exec(db, "PRAGMA journal_size_limit = 67108864", out)) goto done;

    // SQLiteStore.insertBatch: the batches row and every task row in one transaction,
    // with the same columns and statement as insertBatchRow and insertTasks.
    sqlite3_int64 created = (sqlite3_int64)time(NULL) * 1000;
    double start = now_seconds();
    if (exec(db, "BEGIN IMMEDIATE", out)) goto done;
    char batch[256];
    snprintf(batch, sizeof batch,
             "INSERT INTO batches (owner_id, agent, state, total, pending, max_turns, metadata, parent_task_id, "
             "parent_attempt, created_at, deadline_at, creator_uid) "
             "VALUES ('bench', 'echo', 'pending', %d, %d, 0, NULL, NULL, NULL, %lld, NULL, 0)", rows, rows, (long long)created);
    if (exec(db, batch, out)) goto done;
    sqlite3_int64 batch_id = sqlite3_last_insert_rowid(db);
    if (sqlite3_prepare_v3(db,
            "INSERT INTO tasks (batch_id, custom_id, agent, state, priority, max_attempts, timeout_ms, "
            "max_turns, payload, parent_task_id, created_at, url) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)", -1, SQLITE_PREPARE_PERSISTENT, &insert, NULL) != SQLITE_OK) {
        fail(db, out, "prepare insert"); goto done;
    }
    sqlite3_int64 first_id = 0;
    char custom_id[32];
    for (int index = 0; index < rows; index++) {
        int length = make_payload(payload, payload_bytes, index);
        int id_length = snprintf(custom_id, sizeof custom_id, "t%d", index);
        sqlite3_bind_int64(insert, 1, batch_id);
        sqlite3_bind_text(insert, 2, custom_id, id_length, SQLITE_STATIC);
        sqlite3_bind_text(insert, 3, "echo", 4, SQLITE_STATIC);
        sqlite3_bind_int(insert, 4, 0);       // priority
        sqlite3_bind_int(insert, 5, 1);       // max_attempts
        sqlite3_bind_int(insert, 6, 0);       // timeout_ms
        sqlite3_bind_int(insert, 7, 0);       // max_turns
        sqlite3_bind_blob(insert, 8, payload, length, SQLITE_STATIC);
        sqlite3_bind_null(insert, 9);         // parent_task_id
        sqlite3_bind_int64(insert, 10, created);
        sqlite3_bind_null(insert, 11);        // url
        if (sqlite3_step(insert) != SQLITE_DONE) { fail(db, out, "insert"); goto done; }
        sqlite3_reset(insert);
        if (index == 0) first_id = sqlite3_last_insert_rowid(db);
    }
    if (exec(db, "COMMIT", out)) goto done;
    out->insert_seconds = now_seconds() - start;

    // SQLiteStore.commit for a task that started and finished in the same group
    // commit (one UPDATE, the folded statement), the echo result being the payload.
    if (sqlite3_prepare_v3(db,
            "UPDATE tasks SET state = ?, attempt = coalesce(?, attempt), started_at = coalesce(?, started_at), result = ?, "
            "error_message = ?, error_code = ?, error_retryable = ?, turns_completed = ?, finished_at = ?, "
            "status_code = ?, request_id = ?, prompt_tokens = ?, completion_tokens = ?, total_tokens = ? "
            "WHERE id = ?", -1, SQLITE_PREPARE_PERSISTENT, &update, NULL) != SQLITE_OK) {
        fail(db, out, "prepare update"); goto done;
    }
    start = now_seconds();
    for (int index = 0; index < rows; index++) {
        if (index % rows_per_transaction == 0) {
            if (index > 0 && exec(db, "COMMIT", out)) goto done;
            if (exec(db, "BEGIN IMMEDIATE", out)) goto done;
            out->update_transactions += 1;
        }
        int length = make_payload(payload, payload_bytes, index);
        sqlite3_bind_text(update, 1, "completed", 9, SQLITE_STATIC);
        sqlite3_bind_int(update, 2, 1);
        sqlite3_bind_int64(update, 3, created);
        sqlite3_bind_blob(update, 4, payload, length, SQLITE_STATIC);
        for (int column = 5; column <= 7; column++) sqlite3_bind_null(update, column);
        sqlite3_bind_int(update, 8, 0);
        sqlite3_bind_int64(update, 9, created);
        for (int column = 10; column <= 14; column++) sqlite3_bind_null(update, column);
        sqlite3_bind_int64(update, 15, first_id + index);
        if (sqlite3_step(update) != SQLITE_DONE || sqlite3_changes(db) != 1) { fail(db, out, "update"); goto done; }
        sqlite3_reset(update);
    }
    if (rows > 0 && exec(db, "COMMIT", out)) goto done;
    out->update_seconds = now_seconds() - start;
    status = 0;

done:
    sqlite3_finalize(insert);
    sqlite3_finalize(update);
    if (db) sqlite3_close(db);
    free(payload);
    return status;
}
