-- Accounts of the web UI. Passwords are argon2id PHC strings; nothing secret is stored in the
-- clear: session ids, API tokens and the setup code are stored as their SHA-256 (hex), so a
-- copy of this file gives no live session, token or setup code.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Synchronizer token of this session for state-changing forms.
    csrf_token TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    -- Printer that slicer uploads with this token go to when they name none.
    default_printer TEXT,
    created_at_ms INTEGER NOT NULL,
    last_used_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- The one-time code that creating the first account needs (at most one row, only while no
-- account exists).
CREATE TABLE setup_code (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    code_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
