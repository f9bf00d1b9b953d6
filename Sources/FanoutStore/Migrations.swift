import GRDB

/// The schema, one migration per change; never edit a shipped migration.
enum Migrations {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: batches, tasks, events") { db in
            try db.execute(sql: """
                CREATE TABLE batches (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    owner_id TEXT NOT NULL,
                    agent TEXT NOT NULL,
                    state TEXT NOT NULL,
                    total INTEGER NOT NULL,
                    pending INTEGER NOT NULL,
                    running INTEGER NOT NULL DEFAULT 0,
                    waiting_children INTEGER NOT NULL DEFAULT 0,
                    retry_wait INTEGER NOT NULL DEFAULT 0,
                    completed INTEGER NOT NULL DEFAULT 0,
                    failed INTEGER NOT NULL DEFAULT 0,
                    cancelled INTEGER NOT NULL DEFAULT 0,
                    expired INTEGER NOT NULL DEFAULT 0,
                    max_turns INTEGER NOT NULL DEFAULT 0,
                    progress_units INTEGER NOT NULL DEFAULT 0,
                    metadata TEXT,
                    parent_task_id INTEGER,
                    created_at INTEGER NOT NULL,
                    started_at INTEGER,
                    finished_at INTEGER,
                    deadline_at INTEGER,
                    creator_uid INTEGER NOT NULL DEFAULT 0
                );
                CREATE INDEX batches_by_owner ON batches(owner_id, id);
                CREATE INDEX batches_active ON batches(state) WHERE state IN ('pending', 'processing');

                CREATE TABLE tasks (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    batch_id INTEGER NOT NULL REFERENCES batches(id),
                    custom_id TEXT NOT NULL,
                    agent TEXT NOT NULL,
                    state TEXT NOT NULL,
                    priority INTEGER NOT NULL DEFAULT 0,
                    attempt INTEGER NOT NULL DEFAULT 0,
                    max_attempts INTEGER NOT NULL DEFAULT 1,
                    timeout_ms INTEGER NOT NULL DEFAULT 0,
                    turns_completed INTEGER NOT NULL DEFAULT 0,
                    max_turns INTEGER NOT NULL DEFAULT 0,
                    payload BLOB NOT NULL,
                    result BLOB,
                    error_message TEXT,
                    error_code TEXT,
                    error_retryable INTEGER,
                    parent_task_id INTEGER,
                    created_at INTEGER NOT NULL,
                    started_at INTEGER,
                    finished_at INTEGER
                );
                -- Results are read per batch in id order; the rowid already orders them.
                CREATE INDEX tasks_by_batch ON tasks(batch_id, id);

                CREATE TABLE events (
                    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                    kind TEXT NOT NULL,
                    timestamp INTEGER NOT NULL,
                    owner_id TEXT NOT NULL,
                    batch_id INTEGER NOT NULL,
                    task_id INTEGER,
                    custom_id TEXT,
                    parent_task_id INTEGER,
                    progress REAL,
                    counters TEXT,
                    attempt INTEGER,
                    turn INTEGER,
                    retry_delay_ms INTEGER,
                    error_message TEXT,
                    error_code TEXT,
                    error_retryable INTEGER
                );
                """)
        }
        migrator.registerMigration("v2: pending-task index for the scheduler's windows") { db in
            // The scheduler reads each batch's pending tasks per agent in (priority, id) windows;
            // a partial index holds only pending rows, so it shrinks as work finishes.
            try db.execute(sql: """
                CREATE INDEX tasks_pending ON tasks(batch_id, agent, priority DESC, id) WHERE state = 'pending';
                """)
        }
        migrator.registerMigration("v3: a batch's closing intent survives a restart") { db in
            try db.execute(sql: "ALTER TABLE batches ADD COLUMN closing TEXT")
        }
        migrator.registerMigration("v4: events carry their batch's uid; tasks count crashes") { db in
            // Events written before have no uid: only admins see them (they may belong to anyone).
            try db.execute(sql: "ALTER TABLE events ADD COLUMN creator_uid INTEGER")
            try db.execute(sql: "ALTER TABLE tasks ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v5: provider answers and token usage") { db in
            try db.execute(sql: """
                ALTER TABLE tasks ADD COLUMN url TEXT;
                ALTER TABLE tasks ADD COLUMN status_code INTEGER;
                ALTER TABLE tasks ADD COLUMN request_id TEXT;
                ALTER TABLE tasks ADD COLUMN prompt_tokens INTEGER;
                ALTER TABLE tasks ADD COLUMN completion_tokens INTEGER;
                ALTER TABLE tasks ADD COLUMN total_tokens INTEGER;
                ALTER TABLE batches ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE batches ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE batches ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0;
                """)
        }
        migrator.registerMigration("v6: files and batches of the OpenAI-compatible gateway") { db in
            try db.execute(sql: """
                CREATE TABLE files (
                    id TEXT NOT NULL UNIQUE,
                    owner_uid INTEGER NOT NULL,
                    purpose TEXT NOT NULL,
                    filename TEXT NOT NULL,
                    bytes INTEGER NOT NULL DEFAULT 0,
                    lines INTEGER NOT NULL DEFAULT 0,
                    state TEXT NOT NULL,
                    created_at INTEGER NOT NULL
                );
                -- An upload in chunks of whole lines, so no file is ever held whole in memory.
                CREATE TABLE file_chunks (
                    file_id TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    data BLOB NOT NULL,
                    PRIMARY KEY (file_id, seq)
                ) WITHOUT ROWID;
                CREATE TABLE gateway_batches (
                    batch_id INTEGER PRIMARY KEY,
                    input_file_id TEXT NOT NULL,
                    endpoint TEXT NOT NULL,
                    completion_window TEXT NOT NULL,
                    cancel_requested_at INTEGER
                );
                CREATE TABLE gateway_rejects (
                    batch_id INTEGER NOT NULL,
                    line INTEGER NOT NULL,
                    custom_id TEXT NOT NULL,
                    code TEXT NOT NULL,
                    message TEXT NOT NULL,
                    PRIMARY KEY (batch_id, line)
                ) WITHOUT ROWID;
                """)
        }
        migrator.registerMigration("v7: a task's child batches, found by their parent and its attempt") { db in
            try db.execute(sql: "ALTER TABLE batches ADD COLUMN parent_attempt INTEGER")
            try db.execute(sql: "CREATE INDEX batches_parent ON batches(parent_task_id) WHERE parent_task_id IS NOT NULL")
        }

        return migrator
    }
}
