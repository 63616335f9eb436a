//! Webhook delivery: a thread that POSTs persisted deliveries, signed, retrying with exponential
//! backoff. Deliveries live in the store, so a restart picks up where the last process stopped.
//!
//! Receivers verify with: `hex(HMAC-SHA256(webhook_secret, X-Imagen-Timestamp + "." + raw body))`
//! equals the hex after `sha256=` in `X-Imagen-Signature` (compare in constant time, and reject
//! timestamps too far from now to stop replays).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use crate::config::Webhooks;
use crate::keys::now_secs;
use crate::signing::webhook_signature;
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
        let due = match store.due_deliveries(now_ms(), 16) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("imagen-webhooks: reading deliveries: {e}");
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
        .send(d.body.as_str());
    let attempts = d.attempts + 1;
    let error = match result {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) => Some(format!("HTTP {}", resp.status())),
        Err(e) => Some(e.to_string()),
    };
    let written = match error {
        None => store.delivery_done(d.id, "delivered", attempts, None),
        Some(e) if attempts >= config.max_attempts => {
            eprintln!("imagen-webhooks: giving up on delivery {} for {}: {e}", d.id, d.job_id);
            store.delivery_done(d.id, "dead", attempts, Some(&e))
        }
        Some(e) => {
            let delay = config
                .retry_base_ms
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(3_600_000);
            store.delivery_retry(d.id, attempts, now_ms() + delay, &e)
        }
    };
    if let Err(e) = written {
        eprintln!("imagen-webhooks: recording delivery {}: {e}", d.id);
    }
}
