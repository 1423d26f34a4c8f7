-- Alert targets added in Settings → Notifications (besides `[alerts]` in printgate.toml).
-- The URL and the ntfy access token are needed to send, so they are stored as given; the web
-- UI and the API never show them back (only scheme, host and port).
CREATE TABLE alert_targets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('ntfy', 'webhook')),
    url TEXT NOT NULL,
    -- ntfy access token (sent as `Authorization: Bearer`); NULL for none and for webhooks.
    token TEXT,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
