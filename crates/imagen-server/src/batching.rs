//! Dynamic batching, the queue's side: after claiming a job, a worker with `max_batch > 1`
//! claims up to `max_batch − 1` more queued jobs the engine can denoise in the same batch
//! (same model, size, steps, sampler, noise generator and LoRA set; text-to-image), under the
//! same lease. The engine splits them further where it must (CFG or not) and runs alone what
//! cannot share (`imagen_engine::batch`).

use rusqlite::params;

use crate::error::Result;
use crate::pg::{PgStore, blocking, queued_from};
use crate::queue::{QUEUED_COLUMNS, QueuedJob, queued_from_row};
use crate::spec::JobSpec;
use crate::store::SqliteStore;

/// Queued jobs looked at per batch claim (the oldest of the model's).
const SCAN: i64 = 64;

pub trait Batches {
    /// Claims, oldest first, up to `limit` queued jobs for `model` whose spec `fits`, for
    /// `owner` until `lease_until_ms` (their first attempt, or the next one).
    fn claim_more(
        &self,
        owner: &str,
        model: &str,
        lease_until_ms: u64,
        limit: usize,
        fits: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<QueuedJob>>;
}

/// What jobs must share to be claimed together; `None`: the job runs alone.
pub fn batch_key(spec: &JobSpec) -> Option<String> {
    if spec.strength.is_some()
        || spec.long_prompt
        || spec.max_sequence_length.is_some()
        || spec.true_cfg_scale.is_some()
        || spec.skip_layer_guidance.is_some()
    {
        return None;
    }
    let loras = serde_json::to_string(&spec.loras).ok()?;
    Some(format!(
        "{}|{}x{}|{}|{:?}|{}|{loras}",
        spec.model, spec.width, spec.height, spec.steps, spec.scheduler, spec.rng
    ))
}

/// `fits` for the jobs that may join `spec`'s batch.
pub fn fits_with(spec: &JobSpec) -> impl Fn(&str) -> bool + use<> {
    let key = batch_key(spec);
    move |other: &str| key.is_some() && serde_json::from_str::<JobSpec>(other).ok().and_then(|s| batch_key(&s)) == key
}

impl Batches for SqliteStore {
    fn claim_more(
        &self,
        owner: &str,
        model: &str,
        lease_until_ms: u64,
        limit: usize,
        fits: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<QueuedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT id, spec FROM jobs WHERE state = 'queued' AND model = ?1 ORDER BY created_at, rowid LIMIT ?2",
            )?;
            let rows = st.query_map(params![model, SCAN], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?;
            let mut ids = Vec::new();
            for row in rows {
                let (id, spec) = row?;
                if spec.as_deref().is_some_and(fits) && ids.len() < limit {
                    ids.push(id);
                }
            }
            ids
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            claimed.push(tx.query_row(
                &format!(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?1, lease_until_ms = ?2
                     WHERE id = ?3 AND state = 'queued' RETURNING {QUEUED_COLUMNS}"
                ),
                params![owner, lease_until_ms as i64, id],
                queued_from_row,
            )?);
        }
        tx.commit()?;
        Ok(claimed)
    }
}

impl Batches for PgStore {
    fn claim_more(
        &self,
        owner: &str,
        model: &str,
        lease_until_ms: u64,
        limit: usize,
        fits: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<QueuedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        blocking(|| {
            let mut client = self.client()?;
            let mut tx = client.transaction()?;
            // rows another worker is claiming are skipped, not waited for
            let rows = tx.query(
                "SELECT id, spec FROM jobs WHERE state = 'queued' AND model = $1
                 ORDER BY created_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&model, &SCAN],
            )?;
            let ids: Vec<String> = rows
                .iter()
                .filter(|r| r.get::<_, Option<String>>(1).as_deref().is_some_and(fits))
                .map(|r| r.get(0))
                .take(limit)
                .collect();
            let claimed = tx.query(
                &format!(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = $1, lease_until_ms = $2
                     WHERE id = ANY($3) AND state = 'queued' RETURNING {QUEUED_COLUMNS}"
                ),
                &[&owner, &(lease_until_ms as i64), &ids],
            )?;
            tx.commit()?;
            // oldest first, as they were chosen
            let mut jobs: Vec<QueuedJob> = claimed.iter().map(queued_from).collect();
            jobs.sort_by_key(|j| ids.iter().position(|i| *i == j.id));
            Ok(jobs)
        })
    }
}
