//! The PostgreSQL store's schema (its migrations) and how opening it fails: what is worth
//! waiting out and what is not.

use crate::error::Error;

/// Each migration once, in order; the version is its index + 1.
pub(crate) const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, plan TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE);
CREATE TABLE usage (
    key_id TEXT NOT NULL, window_name TEXT NOT NULL, start BIGINT NOT NULL, count BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_name));
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, seq BIGSERIAL, key_id TEXT NOT NULL, status TEXT NOT NULL,
    created_at BIGINT NOT NULL, response TEXT NOT NULL, webhook_url TEXT, webhook_secret TEXT,
    state TEXT NOT NULL DEFAULT 'done', spec TEXT, attempt INT NOT NULL DEFAULT 0,
    max_attempts INT NOT NULL DEFAULT 1, lease_owner TEXT, lease_until_ms BIGINT NOT NULL DEFAULT 0,
    cancel BOOLEAN NOT NULL DEFAULT FALSE);
CREATE INDEX jobs_claim ON jobs (state, created_at, seq);
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
    body TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', attempts INT NOT NULL DEFAULT 0,
    next_ms BIGINT NOT NULL, last_error TEXT);
CREATE INDEX deliveries_due ON deliveries (status, next_ms);
CREATE TABLE idempotency (
    key_id TEXT NOT NULL, idem_key TEXT NOT NULL, request_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL, status INT, content_type TEXT, body BYTEA,
    PRIMARY KEY (key_id, idem_key));
",
    "
ALTER TABLE jobs ADD COLUMN model TEXT;
CREATE TABLE workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, seen_ms BIGINT NOT NULL);
",
    "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
    "CREATE INDEX jobs_key ON jobs (key_id, seq);",
];

/// How long [`PgStore::open`] waits for an unreachable or starting server.
pub(crate) const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why opening failed: worth waiting out (no server yet, or one starting, stopping or
/// recovering) or not (a bad URL, a refused login, a failed migration).
pub(crate) enum Connect {
    Unreachable(Error),
    Other(Error),
}

impl From<postgres::Error> for Connect {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let transient = e.as_db_error().map_or(e.is_closed() || is_io(&e), |d| {
            // 57P03 cannot_connect_now: starting up, shutting down, in recovery
            [
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
            ]
            .contains(d.code())
        });
        if transient {
            Connect::Unreachable(e.into())
        } else {
            Connect::Other(e.into())
        }
    }
}

/// A refused or reset connection (the server is not listening yet, or went away).
fn is_io(e: &postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}
