//! What the processes sharing a store know of each other. Workers: every process that runs jobs
//! (`imagen serve` with its embedded worker, `imagen worker`) writes what it serves and a
//! heartbeat; `GET /v1/workers` and `/readyz` read them back; a worker not seen for a lease is
//! gone (crashed or stopped). The link-signing secret: one for every front-end, so that a link
//! one signs works on all.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pg::{PgStore, blocking};
use crate::store::SqliteStore;

/// One worker process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    /// Its name on the leases it holds (`host-pid-random`).
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// `cpu`, `wgpu` or `wgpu:N` (the N-th discrete GPU), and the compute type.
    pub backend: String,
    pub dtype: String,
    /// Ids of the models it can run (it claims only their jobs).
    pub models: Vec<String>,
    pub started_ms: u64,
    /// Its last heartbeat.
    pub seen_ms: u64,
    /// The job it is running, if any.
    pub running: Option<String>,
}

pub trait Workers: Send + Sync {
    /// Records `w` (insert or replace), its heartbeat at `w.seen_ms`.
    fn worker_beat(&self, w: &WorkerInfo) -> Result<()>;
    /// A worker stopping: removed at once.
    fn worker_gone(&self, id: &str) -> Result<()>;
    /// Workers seen at or after `since_ms`, by id; older rows are deleted on the way.
    fn workers(&self, since_ms: u64) -> Result<Vec<WorkerInfo>>;
    /// The secret image links are signed with on this store: `candidate` (this data
    /// directory's), unless another process stored its own first.
    fn shared_secret(&self, candidate: &str) -> Result<String>;
}

fn parse(rows: Vec<String>) -> Vec<WorkerInfo> {
    rows.iter().filter_map(|r| serde_json::from_str(r).ok()).collect()
}

impl Workers for SqliteStore {
    fn worker_beat(&self, w: &WorkerInfo) -> Result<()> {
        let info = serde_json::to_string(w).unwrap_or_default();
        self.conn().execute(
            "INSERT INTO workers (id, info, seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen_ms = excluded.seen_ms",
            params![w.id, info, w.seen_ms as i64],
        )?;
        Ok(())
    }

    fn worker_gone(&self, id: &str) -> Result<()> {
        self.conn().execute("DELETE FROM workers WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn workers(&self, since_ms: u64) -> Result<Vec<WorkerInfo>> {
        let conn = self.conn();
        conn.execute("DELETE FROM workers WHERE seen_ms < ?1", params![since_ms as i64])?;
        let mut st = conn.prepare("SELECT info FROM workers ORDER BY id")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(parse(rows))
    }

    /// One SQLite file, one data directory, one secret file: the candidate.
    fn shared_secret(&self, candidate: &str) -> Result<String> {
        Ok(candidate.to_owned())
    }
}

impl Workers for PgStore {
    fn worker_beat(&self, w: &WorkerInfo) -> Result<()> {
        let info = serde_json::to_string(w).unwrap_or_default();
        blocking(|| {
            self.client()?.execute(
                "INSERT INTO workers (id, info, seen_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen_ms = excluded.seen_ms",
                &[&w.id, &info, &(w.seen_ms as i64)],
            )?;
            Ok(())
        })
    }

    fn worker_gone(&self, id: &str) -> Result<()> {
        blocking(|| {
            self.client()?.execute("DELETE FROM workers WHERE id = $1", &[&id])?;
            Ok(())
        })
    }

    fn workers(&self, since_ms: u64) -> Result<Vec<WorkerInfo>> {
        blocking(|| {
            let mut c = self.client()?;
            c.execute("DELETE FROM workers WHERE seen_ms < $1", &[&(since_ms as i64)])?;
            let rows = c.query("SELECT info FROM workers ORDER BY id", &[])?;
            Ok(parse(rows.iter().map(|r| r.get(0)).collect()))
        })
    }

    fn shared_secret(&self, candidate: &str) -> Result<String> {
        blocking(|| {
            let mut c = self.client()?;
            c.execute(
                "INSERT INTO settings (name, value) VALUES ('link_secret', $1) ON CONFLICT (name) DO NOTHING",
                &[&candidate],
            )?;
            Ok(
                c.query_one("SELECT value FROM settings WHERE name = 'link_secret'", &[])?
                    .get(0),
            )
        })
    }
}
