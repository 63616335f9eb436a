//! The PostgreSQL store (issue 20, first part): the same `Store` and `Queue` contracts as
//! [`crate::store::SqliteStore`], on a server that several processes share. Claims take
//! `FOR UPDATE SKIP LOCKED`; rate-limit windows are counted under row locks, so exact across
//! processes; migrations are versioned in `imagen_migrations` and applied on open.
//!
//! It speaks through the synchronous `postgres` client, like the SQLite store's calls: the
//! server reaches both from blocking threads (`[store] url`, `--store`, `IMAGEN_STORE_URL`).

use postgres::{NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use crate::error::{Error, Result};
use crate::pg_schema::{Connect, MIGRATIONS, OPEN_PATIENCE};
use crate::queue::{Outbox, Queue, QueuedJob};
use crate::store::{
    Delivery, IDEMPOTENCY_ABANDONED_SECS, IDEMPOTENCY_TTL_SECS, Idempotency, JobRecord, KeyRecord, Store, Window,
    WindowState,
};

/// Connections made as needed, at most [`POOL_SIZE`]; each checked before use, so that a
/// PostgreSQL restart costs the calls in flight, not the process.
type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

const POOL_SIZE: u32 = 8;

pub struct PgStore {
    pool: Pool,
}

fn pool_error(e: r2d2::Error) -> Error {
    Error::Config(format!("postgres: {e}"))
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        // the client's own Display says only "db error": the server's message is the source
        match e.as_db_error() {
            Some(db) => Error::Config(format!("postgres: {}", db.message())),
            None => Error::Config(format!("postgres: {e}")),
        }
    }
}

impl PgStore {
    /// Connects (`postgres://user@host:port/db`) and applies the migrations not yet applied.
    /// A server that is down, restarting or still recovering is waited for (up to
    /// [`OPEN_PATIENCE`]): processes started alongside the database, or during its restart,
    /// come up instead of exiting.
    pub fn open(url: &str) -> Result<Self> {
        blocking(|| {
            let deadline = std::time::Instant::now() + OPEN_PATIENCE;
            let mut said = false;
            loop {
                match Self::connect(url) {
                    Err(Connect::Unreachable(e)) if std::time::Instant::now() < deadline => {
                        if !said {
                            tracing::warn!("waiting for PostgreSQL: {e}");
                            said = true;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                    Err(Connect::Unreachable(e) | Connect::Other(e)) => return Err(e),
                    Ok(store) => return Ok(store),
                }
            }
        })
    }

    fn connect(url: &str) -> std::result::Result<Self, Connect> {
        let config: postgres::Config = url.parse().map_err(|e: postgres::Error| Connect::Other(e.into()))?;
        let mut client = config.connect(NoTls).map_err(Connect::from)?;
        Self::migrate(&mut client).map_err(Connect::from)?;
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(std::time::Duration::from_secs(10))
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(|e| Connect::Unreachable(pool_error(e)))?;
        Ok(PgStore { pool })
    }

    fn migrate(client: &mut postgres::Client) -> std::result::Result<(), postgres::Error> {
        let mut tx = client.transaction()?;
        // one migrator at a time across processes
        tx.execute("SELECT pg_advisory_xact_lock(7468730)", &[])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS imagen_migrations (version INT PRIMARY KEY)")?;
        let done: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM imagen_migrations", &[])?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO imagen_migrations (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )?;
        }
        tx.commit()
    }

    /// A connection of the pool (a new one if the server restarted since).
    pub(crate) fn client(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool.get().map_err(pool_error)
    }
}

/// The blocking client must not run on an async worker as is: there it runs inside
/// `block_in_place` (the server's runtime is multi-threaded); elsewhere directly.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

const KEY_COLUMNS: &str = "id, hash, plan, scopes, created_at, revoked";
const JOB_COLUMNS: &str = "id, key_id, status, created_at, response, webhook_url, webhook_secret";
pub(crate) const QUEUED_COLUMNS: &str =
    "id, key_id, attempt, max_attempts, spec, response, webhook_url, webhook_secret, cancel";

fn key_from(r: &Row) -> KeyRecord {
    KeyRecord {
        id: r.get(0),
        hash: r.get(1),
        plan: r.get(2),
        scopes: r.get::<_, String>(3).split_whitespace().map(str::to_owned).collect(),
        created_at: r.get::<_, i64>(4) as u64,
        revoked: r.get(5),
    }
}

fn job_from(r: &Row) -> JobRecord {
    JobRecord {
        id: r.get(0),
        key_id: r.get(1),
        status: r.get(2),
        created_at: r.get::<_, i64>(3) as u64,
        response: r.get(4),
        webhook_url: r.get(5),
        webhook_secret: r.get(6),
    }
}

pub(crate) fn queued_from(r: &Row) -> QueuedJob {
    let url: Option<String> = r.get(6);
    let secret: Option<String> = r.get(7);
    QueuedJob {
        id: r.get(0),
        key_id: r.get(1),
        attempt: r.get::<_, i32>(2) as u32,
        max_attempts: r.get::<_, i32>(3) as u32,
        spec: r.get::<_, Option<String>>(4).unwrap_or_default(),
        response: r.get(5),
        webhook: url.zip(secret),
        cancel: r.get(8),
    }
}

fn window_state(w: &Window, stored: Option<(i64, i64)>, now: u64) -> WindowState {
    let start = now - now % w.secs;
    let used = match stored {
        Some((s, c)) if s as u64 == start => c as u64,
        _ => 0,
    };
    WindowState {
        limit: w.limit,
        used,
        reset: start + w.secs,
    }
}

impl Store for PgStore {
    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "INSERT INTO keys (id, hash, plan, scopes, created_at, revoked) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &k.id,
                    &k.hash,
                    &k.plan,
                    &k.scopes.join(" "),
                    &(k.created_at as i64),
                    &k.revoked,
                ],
            )?;
            Ok(())
        })
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        blocking(|| {
            let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE hash = $1");
            Ok(self.client()?.query_opt(&sql, &[&hash])?.as_ref().map(key_from))
        })
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        blocking(|| {
            let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at");
            Ok(self.client()?.query(&sql, &[])?.iter().map(key_from).collect())
        })
    }

    fn revoke_key(&self, id: &str) -> Result<bool> {
        blocking(|| {
            Ok(self
                .client()?
                .execute("UPDATE keys SET revoked = TRUE WHERE id = $1", &[&id])?
                > 0)
        })
    }

    fn hit(&self, key_id: &str, windows: &[Window], now: u64) -> Result<(bool, Vec<WindowState>)> {
        blocking(|| {
            let mut client = self.client()?;
            let mut tx = client.transaction()?;
            let mut states = Vec::with_capacity(windows.len());
            for w in windows {
                // the row exists, then is locked: concurrent admissions on any front-end queue here
                tx.execute(
                    "INSERT INTO usage (key_id, window_name, start, count) VALUES ($1, $2, 0, 0)
                     ON CONFLICT DO NOTHING",
                    &[&key_id, &w.name],
                )?;
                let row = tx.query_one(
                    "SELECT start, count FROM usage WHERE key_id = $1 AND window_name = $2 FOR UPDATE",
                    &[&key_id, &w.name],
                )?;
                states.push(window_state(w, Some((row.get(0), row.get(1))), now));
            }
            let allowed = states.iter().all(|s| s.used < s.limit);
            if allowed {
                for (w, s) in windows.iter().zip(states.iter_mut()) {
                    s.used += 1;
                    tx.execute(
                        "UPDATE usage SET start = $3, count = $4 WHERE key_id = $1 AND window_name = $2",
                        &[&key_id, &w.name, &((s.reset - w.secs) as i64), &(s.used as i64)],
                    )?;
                }
            }
            tx.commit()?;
            Ok((allowed, states))
        })
    }

    fn usage(&self, key_id: &str, windows: &[Window], now: u64) -> Result<Vec<WindowState>> {
        blocking(|| {
            let mut client = self.client()?;
            windows
                .iter()
                .map(|w| {
                    let row = client.query_opt(
                        "SELECT start, count FROM usage WHERE key_id = $1 AND window_name = $2",
                        &[&key_id, &w.name],
                    )?;
                    Ok(window_state(w, row.map(|r| (r.get(0), r.get(1))), now))
                })
                .collect()
        })
    }

    fn insert_job(&self, j: &JobRecord) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[
                    &j.id,
                    &j.key_id,
                    &j.status,
                    &(j.created_at as i64),
                    &j.response,
                    &j.webhook_url,
                    &j.webhook_secret,
                ],
            )?;
            Ok(())
        })
    }

    fn update_job(&self, id: &str, status: &str, response: &str) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "UPDATE jobs SET status = $2, response = $3 WHERE id = $1",
                &[&id, &status, &response],
            )?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        blocking(|| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
            Ok(self.client()?.query_opt(&sql, &[&id])?.as_ref().map(job_from))
        })
    }

    fn jobs_of(&self, key_id: &str, before: Option<&str>, limit: usize) -> Result<Vec<(JobRecord, Option<String>)>> {
        blocking(|| {
            let sql = format!(
                "SELECT {JOB_COLUMNS}, spec FROM jobs WHERE key_id = $1 AND ($2::TEXT IS NULL OR seq < \
                 (SELECT seq FROM jobs WHERE id = $2 AND key_id = $1)) ORDER BY seq DESC LIMIT $3"
            );
            let rows = self.client()?.query(&sql, &[&key_id, &before, &(limit as i64)])?;
            Ok(rows.iter().map(|r| (job_from(r), r.get(7))).collect())
        })
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>> {
        blocking(|| {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'processing' AND spec IS NULL ORDER BY created_at"
            );
            Ok(self.client()?.query(&sql, &[])?.iter().map(job_from).collect())
        })
    }

    fn insert_delivery(&self, job_id: &str, url: &str, secret: &str, body: &str, now_ms: u64) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "INSERT INTO deliveries (job_id, url, secret, body, next_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&job_id, &url, &secret, &body, &(now_ms as i64)],
            )?;
            Ok(())
        })
    }

    fn due_deliveries(&self, now_ms: u64, limit: usize, lease_until_ms: u64) -> Result<Vec<Delivery>> {
        blocking(|| {
            let rows = self.client()?.query(
                "UPDATE deliveries SET next_ms = $3
                 WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_ms <= $1
                              ORDER BY next_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, job_id, url, secret, body, attempts",
                &[&(now_ms as i64), &(limit as i64), &(lease_until_ms as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| Delivery {
                    id: r.get(0),
                    job_id: r.get(1),
                    url: r.get(2),
                    secret: r.get(3),
                    body: r.get(4),
                    attempts: r.get::<_, i32>(5) as u32,
                })
                .collect())
        })
    }

    fn delivery_done(&self, id: i64, status: &str, attempts: u32, error: Option<&str>) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "UPDATE deliveries SET status = $2, attempts = $3, last_error = $4 WHERE id = $1",
                &[&id, &status, &(attempts as i32), &error],
            )?;
            Ok(())
        })
    }

    fn delivery_retry(&self, id: i64, attempts: u32, next_ms: u64, error: &str) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "UPDATE deliveries SET attempts = $2, next_ms = $3, last_error = $4 WHERE id = $1",
                &[&id, &(attempts as i32), &(next_ms as i64), &error],
            )?;
            Ok(())
        })
    }

    fn idempotency_begin(&self, key_id: &str, idem_key: &str, request_hash: &str, now: u64) -> Result<Idempotency> {
        blocking(|| {
            let mut client = self.client()?;
            let mut tx = client.transaction()?;
            tx.execute(
                "DELETE FROM idempotency WHERE key_id = $1 AND (created_at < $2 OR (status IS NULL AND created_at < $3))",
                &[
                    &key_id,
                    &(now.saturating_sub(IDEMPOTENCY_TTL_SECS) as i64),
                    &(now.saturating_sub(IDEMPOTENCY_ABANDONED_SECS) as i64),
                ],
            )?;
            let inserted = tx.execute(
                "INSERT INTO idempotency (key_id, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&key_id, &idem_key, &request_hash, &(now as i64)],
            )?;
            let out = if inserted == 1 {
                Idempotency::New
            } else {
                let r = tx.query_one(
                    "SELECT request_hash, status, content_type, body, created_at FROM idempotency
                     WHERE key_id = $1 AND idem_key = $2",
                    &[&key_id, &idem_key],
                )?;
                let (hash, status): (String, Option<i32>) = (r.get(0), r.get(1));
                match status {
                    _ if hash != request_hash => Idempotency::Mismatch,
                    None => Idempotency::InFlight {
                        since: r.get::<_, i64>(4) as u64,
                    },
                    Some(s) => Idempotency::Replay(
                        s as u16,
                        r.get::<_, Option<String>>(2).unwrap_or_default(),
                        r.get::<_, Option<Vec<u8>>>(3).unwrap_or_default(),
                    ),
                }
            };
            tx.commit()?;
            Ok(out)
        })
    }

    fn idempotency_end(
        &self,
        key_id: &str,
        idem_key: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "UPDATE idempotency SET status = $3, content_type = $4, body = $5 WHERE key_id = $1 AND idem_key = $2",
                &[&key_id, &idem_key, &(status as i32), &content_type, &body],
            )?;
            Ok(())
        })
    }

    fn idempotency_abort(&self, key_id: &str, idem_key: &str) -> Result<()> {
        blocking(|| {
            self.client()?.execute(
                "DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 AND status IS NULL",
                &[&key_id, &idem_key],
            )?;
            Ok(())
        })
    }

    fn deliveries_gone(&self, url: &str, error: &str) -> Result<usize> {
        blocking(|| {
            Ok(self.client()?.execute(
                "UPDATE deliveries SET status = 'gone', last_error = $2 WHERE url = $1 AND status = 'pending'",
                &[&url, &error],
            )? as usize)
        })
    }

    fn deliveries_for(&self, job_id: &str) -> Result<Vec<(String, u32)>> {
        blocking(|| {
            let rows = self.client()?.query(
                "SELECT status, attempts FROM deliveries WHERE job_id = $1 ORDER BY id",
                &[&job_id],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i32>(1) as u32)).collect())
        })
    }
}

impl Queue for PgStore {
    fn enqueue(&self, j: &JobRecord, model: &str, spec: &str, max_attempts: u32, capacity: usize) -> Result<bool> {
        blocking(|| {
            let n = self.client()?.execute(
                "INSERT INTO jobs (id, key_id, status, created_at, response, webhook_url, webhook_secret,
                                   state, spec, max_attempts, model)
                 SELECT $1, $2, 'processing', $3, $4, $5, $6, 'queued', $7, $8, $10
                 WHERE (SELECT count(*) FROM jobs WHERE state = 'queued') < $9",
                &[
                    &j.id,
                    &j.key_id,
                    &(j.created_at as i64),
                    &j.response,
                    &j.webhook_url,
                    &j.webhook_secret,
                    &spec,
                    &(max_attempts.max(1) as i32),
                    &(capacity as i64),
                    &model,
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn claim(&self, owner: &str, models: &[String], now_ms: u64, lease_until_ms: u64) -> Result<Option<QueuedJob>> {
        blocking(|| {
            let sql = format!(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = $1, lease_until_ms = $2
                 WHERE id = (SELECT id FROM jobs
                             WHERE (state = 'queued'
                                    OR (state = 'running' AND lease_until_ms < $3 AND attempt < max_attempts))
                               AND (model IS NULL OR model = ANY($4))
                             ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING {QUEUED_COLUMNS}"
            );
            let row = self
                .client()?
                .query_opt(&sql, &[&owner, &(lease_until_ms as i64), &(now_ms as i64), &models])?;
            Ok(row.as_ref().map(queued_from))
        })
    }

    fn heartbeat(&self, id: &str, attempt: u32, lease_until_ms: u64) -> Result<Option<bool>> {
        blocking(|| {
            let row = self.client()?.query_opt(
                "UPDATE jobs SET lease_until_ms = $3 WHERE id = $1 AND attempt = $2 AND state = 'running'
                 RETURNING cancel",
                &[&id, &(attempt as i32), &(lease_until_ms as i64)],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn exhausted(&self, now_ms: u64) -> Result<Vec<QueuedJob>> {
        blocking(|| {
            let sql = format!(
                "SELECT {QUEUED_COLUMNS} FROM jobs
                 WHERE state = 'running' AND lease_until_ms < $1 AND attempt >= max_attempts ORDER BY created_at"
            );
            Ok(self
                .client()?
                .query(&sql, &[&(now_ms as i64)])?
                .iter()
                .map(queued_from)
                .collect())
        })
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
        blocking(|| {
            let mut client = self.client()?;
            let mut tx = client.transaction()?;
            let n = match attempt {
                Some(a) => tx.execute(
                    "UPDATE jobs SET state = 'done', status = $3, response = $4, lease_owner = NULL
                     WHERE id = $1 AND attempt = $2 AND state = 'running'",
                    &[&id, &(a as i32), &status, &response],
                )?,
                None => tx.execute(
                    "UPDATE jobs SET state = 'done', status = $2, response = $3 WHERE id = $1 AND state = 'queued'",
                    &[&id, &status, &response],
                )?,
            };
            if n == 0 {
                return Ok(false);
            }
            if let Some(o) = outbox {
                tx.execute(
                    "INSERT INTO deliveries (job_id, url, secret, body, next_ms) VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &o.url, &o.secret, &o.body, &(now_ms as i64)],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn release(&self, id: &str, attempt: u32) -> Result<bool> {
        blocking(|| {
            Ok(self.client()?.execute(
                "UPDATE jobs SET state = 'queued', attempt = attempt - 1, lease_owner = NULL, lease_until_ms = 0
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
                &[&id, &(attempt as i32)],
            )? == 1)
        })
    }

    fn request_cancel(&self, id: &str) -> Result<Option<String>> {
        blocking(|| {
            let row = self
                .client()?
                .query_opt("UPDATE jobs SET cancel = TRUE WHERE id = $1 RETURNING state", &[&id])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn position(&self, id: &str) -> Result<Option<usize>> {
        blocking(|| {
            let row = self.client()?.query_opt(
                "SELECT (SELECT count(*) FROM jobs q WHERE q.state = 'queued'
                           AND (q.created_at, q.seq) <= (j.created_at, j.seq))
                 FROM jobs j WHERE j.id = $1 AND j.state = 'queued'",
                &[&id],
            )?;
            Ok(row.map(|r| r.get::<_, i64>(0) as usize))
        })
    }

    fn queued_count(&self) -> Result<usize> {
        blocking(|| {
            let n: i64 = self
                .client()?
                .query_one("SELECT count(*) FROM jobs WHERE state = 'queued'", &[])?
                .get(0);
            Ok(n as usize)
        })
    }
}
