//! The job queue lives in the store (River / graphile-worker style): a job row is the truth.
//! A request is accepted once its row is committed `queued`; a worker claims the oldest one
//! under a lease it keeps alive with heartbeats; the final state is written fenced by the
//! attempt that holds the lease, together with the job's webhook delivery (the outbox) in one
//! transaction. A lease that expires (crash, kill -9, hang) makes the job claimable again,
//! until `max_attempts` claims have been spent.
//!
//! `jobs.state` is the queue's own state (`queued`, `running`, `done`); `jobs.status` stays
//! the contract's (`processing`, `completed`, `failed`).

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::store::{JobRecord, SqliteStore};

/// A claimed job (or one whose attempts ran out), as the worker needs it.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub id: String,
    pub key_id: String,
    /// 1 for the first claim; the fence of every later write.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The validated request (`spec::JobSpec` as JSON).
    pub spec: String,
    /// The record as accepted (status `processing`).
    pub response: String,
    pub webhook: Option<(String, String)>,
    pub cancel: bool,
}

/// A webhook delivery to write with a job's final state.
pub struct Outbox<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub body: &'a str,
}

pub trait Queue: Send + Sync + crate::batching::Batches {
    /// Adds a `queued` job for `model` unless `capacity` jobs already wait; `false` when full.
    fn enqueue(&self, job: &JobRecord, model: &str, spec: &str, max_attempts: u32, capacity: usize) -> Result<bool>;
    /// Claims the oldest queued job for one of `models`, or a running one whose lease expired
    /// with attempts left, for `owner` until `lease_until_ms`.
    fn claim(&self, owner: &str, models: &[String], now_ms: u64, lease_until_ms: u64) -> Result<Option<QueuedJob>>;
    /// Extends the lease of `attempt`; `None` when that attempt no longer holds it, else whether
    /// a cancel was requested.
    fn heartbeat(&self, id: &str, attempt: u32, lease_until_ms: u64) -> Result<Option<bool>>;
    /// Running jobs whose lease expired on their last allowed attempt.
    fn exhausted(&self, now_ms: u64) -> Result<Vec<QueuedJob>>;
    /// Writes the final `status` and record, fenced: by `attempt` while running, or (`None`) only
    /// while still queued; the delivery is inserted in the same transaction. `false` when the
    /// fence does not hold (nothing written).
    fn finish(
        &self,
        id: &str,
        attempt: Option<u32>,
        status: &str,
        response: &str,
        outbox: Option<Outbox>,
        now_ms: u64,
    ) -> Result<bool>;
    /// Gives a running attempt's job back to the queue at once (graceful shutdown), without
    /// spending the attempt; `false` when that attempt no longer holds it.
    fn release(&self, id: &str, attempt: u32) -> Result<bool>;
    /// Flags a cancel; the job's queue state (`queued`, `running`, `done`), `None` if unknown.
    fn request_cancel(&self, id: &str) -> Result<Option<String>>;
    /// Jobs waiting (position 1 = next), by id.
    fn position(&self, id: &str) -> Result<Option<usize>>;
    /// Jobs waiting to be claimed (the metrics' queue depth).
    fn queued_count(&self) -> Result<usize>;
}

/// Columns added to `jobs` for the queue (existing databases get them by `ALTER TABLE`).
pub(crate) const MIGRATION: &[&str] = &[
    "ALTER TABLE jobs ADD COLUMN state TEXT NOT NULL DEFAULT 'done'",
    "ALTER TABLE jobs ADD COLUMN spec TEXT",
    "ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
    "ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (state, created_at)",
];

/// Schema version 2: the model a job needs (a worker claims only the models it has; jobs of
/// older versions have none and go to any worker), and the workers' heartbeats.
pub(crate) const MIGRATION_2: &[&str] = &[
    "ALTER TABLE jobs ADD COLUMN model TEXT",
    "CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, seen_ms INTEGER NOT NULL)",
];

pub(crate) const QUEUED_COLUMNS: &str =
    "id, key_id, attempt, max_attempts, spec, response, webhook_url, webhook_secret, cancel";

pub(crate) fn queued_from_row(r: &rusqlite::Row) -> rusqlite::Result<QueuedJob> {
    let url: Option<String> = r.get(6)?;
    let secret: Option<String> = r.get(7)?;
    Ok(QueuedJob {
        id: r.get(0)?,
        key_id: r.get(1)?,
        attempt: r.get::<_, i64>(2)? as u32,
        max_attempts: r.get::<_, i64>(3)? as u32,
        spec: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
        response: r.get(5)?,
        webhook: url.zip(secret),
        cancel: r.get::<_, i64>(8)? != 0,
    })
}

impl Queue for SqliteStore {
    fn enqueue(&self, j: &JobRecord, model: &str, spec: &str, max_attempts: u32, capacity: usize) -> Result<bool> {
        // one statement: the capacity check and the insert are atomic
        let n = self.conn().execute(
            "INSERT INTO jobs (id, key_id, status, created_at, response, webhook_url, webhook_secret,
                               state, spec, max_attempts, model)
             SELECT ?1, ?2, 'processing', ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?10
             WHERE (SELECT count(*) FROM jobs WHERE state = 'queued') < ?9",
            params![
                j.id,
                j.key_id,
                j.created_at as i64,
                j.response,
                j.webhook_url,
                j.webhook_secret,
                spec,
                max_attempts.max(1) as i64,
                capacity as i64,
                model
            ],
        )?;
        Ok(n == 1)
    }

    fn claim(&self, owner: &str, models: &[String], now_ms: u64, lease_until_ms: u64) -> Result<Option<QueuedJob>> {
        let models = serde_json::to_string(models).unwrap_or_else(|_| "[]".into());
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?1,
                                     lease_until_ms = ?2
                     WHERE id = (SELECT id FROM jobs
                                 WHERE (state = 'queued'
                                        OR (state = 'running' AND lease_until_ms < ?3 AND attempt < max_attempts))
                                   AND (model IS NULL OR model IN (SELECT value FROM json_each(?4)))
                                 ORDER BY created_at, rowid LIMIT 1)
                     RETURNING {QUEUED_COLUMNS}"
                ),
                params![owner, lease_until_ms as i64, now_ms as i64, models],
                queued_from_row,
            )
            .optional()?)
    }

    fn heartbeat(&self, id: &str, attempt: u32, lease_until_ms: u64) -> Result<Option<bool>> {
        Ok(self
            .conn()
            .query_row(
                "UPDATE jobs SET lease_until_ms = ?3 WHERE id = ?1 AND attempt = ?2 AND state = 'running'
                 RETURNING cancel",
                params![id, attempt as i64, lease_until_ms as i64],
                |r| Ok(r.get::<_, i64>(0)? != 0),
            )
            .optional()?)
    }

    fn exhausted(&self, now_ms: u64) -> Result<Vec<QueuedJob>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {QUEUED_COLUMNS} FROM jobs
             WHERE state = 'running' AND lease_until_ms < ?1 AND attempt >= max_attempts ORDER BY created_at"
        ))?;
        let rows = st.query_map([now_ms as i64], queued_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn finish(
        &self,
        id: &str,
        attempt: Option<u32>,
        status: &str,
        response: &str,
        outbox: Option<Outbox>,
        now_ms: u64,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = match attempt {
            Some(a) => tx.execute(
                "UPDATE jobs SET state = 'done', status = ?3, response = ?4, lease_owner = NULL
                 WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
                params![id, a as i64, status, response],
            )?,
            None => tx.execute(
                "UPDATE jobs SET state = 'done', status = ?2, response = ?3 WHERE id = ?1 AND state = 'queued'",
                params![id, status, response],
            )?,
        };
        if n == 0 {
            return Ok(false);
        }
        if let Some(o) = outbox {
            tx.execute(
                "INSERT INTO deliveries (job_id, url, secret, body, next_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, o.url, o.secret, o.body, now_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn release(&self, id: &str, attempt: u32) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE jobs SET state = 'queued', attempt = attempt - 1, lease_owner = NULL, lease_until_ms = 0
             WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
            params![id, attempt as i64],
        )? == 1)
    }

    fn request_cancel(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("UPDATE jobs SET cancel = 1 WHERE id = ?1 RETURNING state", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn position(&self, id: &str) -> Result<Option<usize>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT (SELECT count(*) FROM jobs q WHERE q.state = 'queued'
                           AND (q.created_at, q.rowid) <= (j.created_at, j.rowid))
                 FROM jobs j WHERE j.id = ?1 AND j.state = 'queued'",
                [id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|n| n as usize))
    }

    fn queued_count(&self) -> Result<usize> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM jobs WHERE state = 'queued'", [], |r| r.get(0))?;
        Ok(n as usize)
    }
}
