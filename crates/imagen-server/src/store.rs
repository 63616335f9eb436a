//! Persistence behind one narrow trait: API keys, usage counters, jobs, webhook deliveries.
//! [`SqliteStore`] is the embedded default (one file in the data directory); a networked store
//! for several machines implements the same trait.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Public id (`key_…`), safe to log and list.
    pub id: String,
    /// SHA-256 of the secret key, hex. The key itself is never stored.
    pub hash: String,
    pub plan: String,
    /// Empty: every endpoint and model.
    pub scopes: Vec<String>,
    pub created_at: u64,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub key_id: String,
    /// `processing`, `completed` or `failed`.
    pub status: String,
    pub created_at: u64,
    /// The response object as last written (JSON).
    pub response: String,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub job_id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    pub attempts: u32,
}

/// One rate-limit window after a request was counted (or refused).
#[derive(Debug, Clone, Copy)]
pub struct WindowState {
    pub limit: u64,
    pub used: u64,
    /// Unix seconds when the window restarts.
    pub reset: u64,
}

/// A window: its length in seconds and the most requests it allows.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub name: &'static str,
    pub secs: u64,
    pub limit: u64,
}

pub trait Store: Send + Sync {
    fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>>;
    fn list_keys(&self) -> Result<Vec<KeyRecord>>;
    /// `false` when no such key.
    fn revoke_key(&self, id: &str) -> Result<bool>;

    /// Counts one request in every window unless one is already full; atomic, so exact under
    /// concurrent requests. Returns each window's state and whether the request was allowed.
    fn hit(&self, key_id: &str, windows: &[Window], now: u64) -> Result<(bool, Vec<WindowState>)>;
    /// The windows' state without counting.
    fn usage(&self, key_id: &str, windows: &[Window], now: u64) -> Result<Vec<WindowState>>;

    fn insert_job(&self, job: &JobRecord) -> Result<()>;
    fn update_job(&self, id: &str, status: &str, response: &str) -> Result<()>;
    fn job(&self, id: &str) -> Result<Option<JobRecord>>;
    /// Jobs left `processing` by a version without the durable queue (no stored request to
    /// run them from).
    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>>;
    /// A key's jobs, newest first, each with its stored spec (JSON; none for jobs of older
    /// versions); `before`: only jobs made before that one (the next page).
    fn jobs_of(&self, key_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<(JobRecord, Option<String>)>>;

    fn insert_delivery(&self, job_id: &str, url: &str, secret: &str, body: &str, now_ms: u64) -> Result<()>;
    /// Pending deliveries due at `now_ms`, oldest first.
    /// Claims up to `limit` pending deliveries due at `now_ms`, oldest first, until
    /// `lease_until_ms`: no other process takes them before then (one that dies with them
    /// leaves them due again at that time).
    fn due_deliveries(&self, now_ms: u64, limit: usize, lease_until_ms: u64) -> Result<Vec<Delivery>>;
    fn delivery_done(&self, id: i64, status: &str, attempts: u32, error: Option<&str>) -> Result<()>;
    fn delivery_retry(&self, id: i64, attempts: u32, next_ms: u64, error: &str) -> Result<()>;
    /// Looks up (and, when new, records as in flight) an API key's `Idempotency-Key`.
    fn idempotency_begin(&self, key_id: &str, idem_key: &str, request_hash: &str, now: u64) -> Result<Idempotency>;
    /// Stores the answer to replay.
    fn idempotency_end(&self, key_id: &str, idem_key: &str, status: u16, content_type: &str, body: &[u8])
    -> Result<()>;
    /// Forgets an in-flight key (the request was not admitted: retrying it is a new request).
    fn idempotency_abort(&self, key_id: &str, idem_key: &str) -> Result<()>;
    /// A receiver answered `410 Gone`: every pending delivery to `url` stops (`gone`).
    fn deliveries_gone(&self, url: &str, error: &str) -> Result<usize>;
    /// (status, attempts) of the deliveries for a job, for tests and operators.
    fn deliveries_for(&self, job_id: &str) -> Result<Vec<(String, u32)>>;
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, plan TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL, window TEXT NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (key_id, window));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    response TEXT NOT NULL, webhook_url TEXT, webhook_secret TEXT);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, url TEXT NOT NULL,
    secret TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL, last_error TEXT);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_ms);
CREATE TABLE IF NOT EXISTS idempotency (
    key_id TEXT NOT NULL, idem_key TEXT NOT NULL, request_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL, status INTEGER, content_type TEXT, body BLOB,
    PRIMARY KEY (key_id, idem_key));
";

/// What an `Idempotency-Key` finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Idempotency {
    /// First use: recorded as in flight; answer it, then [`Store::idempotency_end`].
    New,
    /// Answered before: (status, content type, body) to send again.
    Replay(u16, String, Vec<u8>),
    /// Used before with another request.
    Mismatch,
    /// Its first request is still being answered (or its process died first); `since`: when
    /// that request began (with the key, it fixes the job id the request submits).
    InFlight { since: u64 },
}

/// (request hash, status, content type, body) of a stored idempotent answer.
type StoredAnswer = (String, Option<i64>, Option<String>, Option<Vec<u8>>);

/// How long a key is remembered, and after how long an answer that never came (the process
/// died mid-request) stops blocking the key.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
pub const IDEMPOTENCY_ABANDONED_SECS: u64 = 3600;

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // schema version 1: the job queue's columns; 2: jobs' models, workers (crate::queue);
        // 3: a key's jobs by key (the gallery)
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let migration_3: &[&str] = &["CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key_id)"];
        for (v, statements) in [
            (1, crate::queue::MIGRATION),
            (2, crate::queue::MIGRATION_2),
            (3, migration_3),
        ] {
            if version < v {
                let tx = conn.transaction()?;
                for statement in statements {
                    tx.execute(statement, [])?;
                }
                tx.pragma_update(None, "user_version", v)?;
                tx.commit()?;
            }
        }
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key_from_row(r: &rusqlite::Row) -> rusqlite::Result<KeyRecord> {
    let scopes: String = r.get(3)?;
    Ok(KeyRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        plan: r.get(2)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        created_at: r.get::<_, i64>(4)? as u64,
        revoked: r.get::<_, i64>(5)? != 0,
    })
}

fn job_from_row(r: &rusqlite::Row) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        key_id: r.get(1)?,
        status: r.get(2)?,
        created_at: r.get::<_, i64>(3)? as u64,
        response: r.get(4)?,
        webhook_url: r.get(5)?,
        webhook_secret: r.get(6)?,
    })
}

const JOB_COLUMNS: &str = "id, key_id, status, created_at, response, webhook_url, webhook_secret";

/// Current state of `w` given the stored (start, count); a stale window counts as empty.
fn window_state(w: &Window, stored: Option<(u64, u64)>, now: u64) -> WindowState {
    let start = now - now % w.secs;
    let used = match stored {
        Some((s, c)) if s == start => c,
        _ => 0,
    };
    WindowState {
        limit: w.limit,
        used,
        reset: start + w.secs,
    }
}

impl Store for SqliteStore {
    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO keys (id, hash, plan, scopes, created_at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                k.id,
                k.hash,
                k.plan,
                k.scopes.join(" "),
                k.created_at as i64,
                k.revoked as i64
            ],
        )?;
        Ok(())
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, hash, plan, scopes, created_at, revoked FROM keys WHERE hash = ?1",
                [hash],
                key_from_row,
            )
            .optional()?)
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT id, hash, plan, scopes, created_at, revoked FROM keys ORDER BY created_at")?;
        let rows = st.query_map([], key_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_key(&self, id: &str) -> Result<bool> {
        Ok(self.conn().execute("UPDATE keys SET revoked = 1 WHERE id = ?1", [id])? > 0)
    }

    fn hit(&self, key_id: &str, windows: &[Window], now: u64) -> Result<(bool, Vec<WindowState>)> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut states = Vec::with_capacity(windows.len());
        for w in windows {
            let stored: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT start, count FROM usage WHERE key_id = ?1 AND window = ?2",
                    params![key_id, w.name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            states.push(window_state(w, stored.map(|(s, c)| (s as u64, c as u64)), now));
        }
        let allowed = states.iter().all(|s| s.used < s.limit);
        if allowed {
            for (w, s) in windows.iter().zip(states.iter_mut()) {
                s.used += 1;
                tx.execute(
                    "INSERT INTO usage (key_id, window, start, count) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key_id, window) DO UPDATE SET start = ?3, count = ?4",
                    params![key_id, w.name, (s.reset - w.secs) as i64, s.used as i64],
                )?;
            }
        }
        tx.commit()?;
        Ok((allowed, states))
    }

    fn usage(&self, key_id: &str, windows: &[Window], now: u64) -> Result<Vec<WindowState>> {
        let conn = self.conn();
        windows
            .iter()
            .map(|w| {
                let stored: Option<(i64, i64)> = conn
                    .query_row(
                        "SELECT start, count FROM usage WHERE key_id = ?1 AND window = ?2",
                        params![key_id, w.name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok(window_state(w, stored.map(|(s, c)| (s as u64, c as u64)), now))
            })
            .collect()
    }

    fn insert_job(&self, j: &JobRecord) -> Result<()> {
        self.conn().execute(
            &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                j.id,
                j.key_id,
                j.status,
                j.created_at as i64,
                j.response,
                j.webhook_url,
                j.webhook_secret
            ],
        )?;
        Ok(())
    }

    fn update_job(&self, id: &str, status: &str, response: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET status = ?2, response = ?3 WHERE id = ?1",
            params![id, status, response],
        )?;
        Ok(())
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    fn jobs_of(&self, key_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<(JobRecord, Option<String>)>> {
        let conn = self.conn();
        // rowid: the order of insertion, finer than created_at's seconds
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS}, spec FROM jobs WHERE key_id = ?1 AND (?2 IS NULL OR rowid < \
             (SELECT rowid FROM jobs WHERE id = ?2 AND key_id = ?1)) ORDER BY rowid DESC LIMIT ?3"
        ))?;
        let rows = st.query_map(params![key_id, before, limit as i64], |r| {
            Ok((job_from_row(r)?, r.get(7)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'processing' AND spec IS NULL ORDER BY created_at"
        ))?;
        let rows = st.query_map([], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_delivery(&self, job_id: &str, url: &str, secret: &str, body: &str, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO deliveries (job_id, url, secret, body, next_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job_id, url, secret, body, now_ms as i64],
        )?;
        Ok(())
    }

    fn due_deliveries(&self, now_ms: u64, limit: usize, lease_until_ms: u64) -> Result<Vec<Delivery>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "UPDATE deliveries SET next_ms = ?3
             WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_ms <= ?1
                          ORDER BY next_ms LIMIT ?2)
             RETURNING id, job_id, url, secret, body, attempts",
        )?;
        let rows = st.query_map(params![now_ms as i64, limit as i64, lease_until_ms as i64], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                job_id: r.get(1)?,
                url: r.get(2)?,
                secret: r.get(3)?,
                body: r.get(4)?,
                attempts: r.get::<_, i64>(5)? as u32,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delivery_done(&self, id: i64, status: &str, attempts: u32, error: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE deliveries SET status = ?2, attempts = ?3, last_error = ?4 WHERE id = ?1",
            params![id, status, attempts as i64, error],
        )?;
        Ok(())
    }

    fn delivery_retry(&self, id: i64, attempts: u32, next_ms: u64, error: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deliveries SET attempts = ?2, next_ms = ?3, last_error = ?4 WHERE id = ?1",
            params![id, attempts as i64, next_ms as i64, error],
        )?;
        Ok(())
    }

    fn idempotency_begin(&self, key_id: &str, idem_key: &str, request_hash: &str, now: u64) -> Result<Idempotency> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency WHERE key_id = ?1 AND (created_at < ?2 OR (status IS NULL AND created_at < ?3))",
            params![
                key_id,
                now.saturating_sub(IDEMPOTENCY_TTL_SECS) as i64,
                now.saturating_sub(IDEMPOTENCY_ABANDONED_SECS) as i64
            ],
        )?;
        let found: Option<(StoredAnswer, i64)> = tx
            .query_row(
                "SELECT request_hash, status, content_type, body, created_at FROM idempotency \
                 WHERE key_id = ?1 AND idem_key = ?2",
                params![key_id, idem_key],
                |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?), r.get::<_, i64>(4)?)),
            )
            .optional()?;
        let out = match found {
            Some(((hash, _, _, _), _)) if hash != request_hash => Idempotency::Mismatch,
            Some(((_, None, _, _), since)) => Idempotency::InFlight { since: since as u64 },
            Some(((_, Some(status), ct, body), _)) => {
                Idempotency::Replay(status as u16, ct.unwrap_or_default(), body.unwrap_or_default())
            }
            None => {
                tx.execute(
                    "INSERT INTO idempotency (key_id, idem_key, request_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![key_id, idem_key, request_hash, now as i64],
                )?;
                Idempotency::New
            }
        };
        tx.commit()?;
        Ok(out)
    }

    fn idempotency_end(
        &self,
        key_id: &str,
        idem_key: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5 WHERE key_id = ?1 AND idem_key = ?2",
            params![key_id, idem_key, status as i64, content_type, body],
        )?;
        Ok(())
    }

    fn idempotency_abort(&self, key_id: &str, idem_key: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM idempotency WHERE key_id = ?1 AND idem_key = ?2 AND status IS NULL",
            params![key_id, idem_key],
        )?;
        Ok(())
    }

    fn deliveries_gone(&self, url: &str, error: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE deliveries SET status = 'gone', last_error = ?2 WHERE url = ?1 AND status = 'pending'",
            params![url, error],
        )?)
    }

    fn deliveries_for(&self, job_id: &str) -> Result<Vec<(String, u32)>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT status, attempts FROM deliveries WHERE job_id = ?1 ORDER BY id")?;
        let rows = st.query_map([job_id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u32)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
