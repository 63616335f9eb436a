//! Webhook delivery: a thread that POSTs persisted deliveries, signed, retrying with exponential
//! backoff. Deliveries live in the store, so a restart picks up where the last process stopped.
//!
//! Each delivery is signed twice: the Standard Webhooks scheme (`webhook-id` = the job id, the
//! same on every retry; `webhook-timestamp`; `webhook-signature: v1,<base64 HMAC>`), which its
//! libraries verify, and imagen's own `X-Imagen-Signature` (`sha256=` + hex HMAC-SHA256 of
//! timestamp "." body). A `410 Gone` stops every pending delivery to that URL; `Retry-After`
//! (seconds or an HTTP date) postpones the next attempt at least that long.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use crate::config::Webhooks;
use crate::keys::now_secs;
use crate::metrics::METRICS;
use crate::signing::{standard_webhooks_signature, webhook_signature};
use crate::store::{Delivery, Store};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wakes the delivery thread when a new delivery is queued (otherwise it polls).
#[derive(Clone)]
pub struct Notifier(Sender<()>);

impl Notifier {
    pub fn notify(&self) {
        let _ = self.0.send(());
    }
}

pub fn spawn(store: Arc<dyn Store>, config: Webhooks) -> std::io::Result<Notifier> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("imagen-webhooks".into())
        .spawn(move || run(store, config, rx))?;
    Ok(Notifier(tx))
}

fn run(store: Arc<dyn Store>, config: Webhooks, wake: Receiver<()>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    loop {
        // claimed for as long as sending them all could take (each attempt is bounded); a
        // small batch keeps that lease, what a crash delays them by, short
        const BATCH: usize = 4;
        let lease = now_ms() + config.timeout_ms.saturating_mul(BATCH as u64 + 1);
        let due = match store.due_deliveries(now_ms(), BATCH, lease) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("reading deliveries: {e}");
                Vec::new()
            }
        };
        for d in &due {
            deliver(&agent, store.as_ref(), &config, d);
        }
        if due.is_empty() {
            match wake.recv_timeout(Duration::from_millis(250)) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                _ => continue,
            }
        }
    }
}

fn deliver(agent: &ureq::Agent, store: &dyn Store, config: &Webhooks, d: &Delivery) {
    let ts = now_secs();
    let result = agent
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "imagen-webhooks/1")
        .header("X-Imagen-Timestamp", ts.to_string())
        .header("X-Imagen-Signature", webhook_signature(&d.secret, ts, &d.body))
        .header("X-Imagen-Delivery", d.id.to_string())
        .header("webhook-id", d.job_id.as_str())
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            standard_webhooks_signature(&d.secret, &d.job_id, ts, &d.body),
        )
        .send(d.body.as_str());
    let attempts = d.attempts + 1;
    let mut retry_after_ms = 0;
    let error = match result {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) if resp.status().as_u16() == 410 => {
            let e = "HTTP 410 Gone: the receiver retired this URL";
            tracing::warn!(target: "imagen::webhooks", delivery = d.id, job = %d.job_id, url = where_to(&d.url),
                attempts, "gone: the receiver answered 410; no more deliveries there");
            METRICS.webhook("gone");
            if let Err(err) = store
                .delivery_done(d.id, "gone", attempts, Some(e))
                .and_then(|()| store.deliveries_gone(&d.url, e))
            {
                tracing::error!("recording delivery {}: {err}", d.id);
            }
            return;
        }
        Ok(resp) => {
            retry_after_ms = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after)
                .unwrap_or(0);
            Some(format!("HTTP {}", resp.status()))
        }
        Err(e) => Some(e.to_string()),
    };
    let outcome = match &error {
        None => "delivered",
        Some(_) if attempts >= config.max_attempts => "dead",
        Some(_) => "retry",
    };
    METRICS.webhook(outcome);
    let url = where_to(&d.url);
    let written = match error {
        None => {
            tracing::info!(target: "imagen::webhooks", delivery = d.id, job = %d.job_id, url, attempts, "delivered");
            store.delivery_done(d.id, "delivered", attempts, None)
        }
        Some(e) if attempts >= config.max_attempts => {
            tracing::error!(target: "imagen::webhooks", delivery = d.id, job = %d.job_id, url, attempts,
                error = %e, "dead: giving up");
            store.delivery_done(d.id, "dead", attempts, Some(&e))
        }
        Some(e) => {
            let delay = config
                .retry_base_ms
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(3_600_000)
                .max(retry_after_ms.min(86_400_000));
            tracing::warn!(target: "imagen::webhooks", delivery = d.id, job = %d.job_id, url, attempts,
                error = %e, retry_in_ms = delay, "failed; will retry");
            store.delivery_retry(d.id, attempts, now_ms() + delay, &e)
        }
    };
    if let Err(e) = written {
        tracing::error!("recording delivery {}: {e}", d.id);
    }
}

/// A receiver's URL for the log: without its query, where tokens tend to live.
fn where_to(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `Retry-After` in milliseconds: delay-seconds, or an HTTP date (RFC 9110).
fn retry_after(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_millis() as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::retry_after;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("120"), Some(120_000));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(0),
            "a past date: now"
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(90));
        assert!(retry_after(&later).is_some_and(|ms| (85_000..=90_000).contains(&ms)));
        assert_eq!(retry_after("soon"), None);
    }
}
