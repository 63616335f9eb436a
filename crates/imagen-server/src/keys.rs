//! API keys: creation, hashing, plans (rate limits) and scopes.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::{KeyRecord, Store, Window};

/// Plans and their limits, as the contract states them.
pub const PLANS: [(&str, u64, u64); 3] = [("free", 10, 100), ("pro", 100, 10_000), ("enterprise", 1_000, 100_000)];

/// Scopes a key can be limited to; `model:<id>` limits it to models.
pub const ENDPOINT_SCOPES: [&str; 4] = ["text-to-image", "image-to-image", "variations", "models"];

/// Operator routes (`GET /v1/workers`): granted only by name, never by an unscoped key.
pub const ADMIN_SCOPE: &str = "admin";

/// The per-minute and per-day windows of a plan.
pub fn windows(plan: &str) -> Vec<Window> {
    let (_, per_min, per_day) = PLANS.iter().copied().find(|p| p.0 == plan).unwrap_or(PLANS[0]);
    vec![
        Window {
            name: "minute",
            secs: 60,
            limit: per_min,
        },
        Window {
            name: "day",
            secs: 86_400,
            limit: per_day,
        },
    ]
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates a key; returns the secret (shown once) and its record.
pub fn create(store: &dyn Store, plan: &str, scopes: Vec<String>) -> Result<(String, KeyRecord)> {
    if !PLANS.iter().any(|p| p.0 == plan) {
        return Err(Error::Config(format!("unknown plan {plan:?} (free, pro, enterprise)")));
    }
    for s in &scopes {
        if !ENDPOINT_SCOPES.contains(&s.as_str())
            && s != ADMIN_SCOPE
            && s.strip_prefix("model:").is_none_or(|m| m.is_empty())
        {
            return Err(Error::Config(format!(
                "unknown scope {s:?} (one of {}, admin, or model:<id>)",
                ENDPOINT_SCOPES.join(", ")
            )));
        }
    }
    let secret = format!("imk_{}", random_hex(24)?);
    let record = KeyRecord {
        id: format!("key_{}", random_hex(6)?),
        hash: hash(&secret),
        plan: plan.to_owned(),
        scopes,
        created_at: now_secs(),
        revoked: false,
    };
    store.insert_key(&record)?;
    Ok((secret, record))
}

/// Whether `key` may call `endpoint` (one of [`ENDPOINT_SCOPES`]) on `model` (if any); the
/// admin scope adds the operator routes and restricts nothing.
pub fn allows(key: &KeyRecord, endpoint: &str, model: Option<&str>) -> bool {
    let endpoints: Vec<&str> = key
        .scopes
        .iter()
        .filter(|s| !s.starts_with("model:") && s.as_str() != ADMIN_SCOPE)
        .map(String::as_str)
        .collect();
    let models: Vec<&str> = key.scopes.iter().filter_map(|s| s.strip_prefix("model:")).collect();
    let endpoint_ok = endpoints.is_empty() || endpoints.contains(&endpoint);
    let model_ok = models.is_empty() || model.is_none_or(|m| models.contains(&m));
    endpoint_ok && model_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scopes: &[&str]) -> KeyRecord {
        KeyRecord {
            id: "key_x".into(),
            hash: String::new(),
            plan: "free".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created_at: 0,
            revoked: false,
        }
    }

    #[test]
    fn scopes_limit_endpoints_and_models() {
        assert!(allows(&key(&[]), "variations", Some("m")));
        let k = key(&["text-to-image", "model:a"]);
        assert!(allows(&k, "text-to-image", Some("a")));
        assert!(!allows(&k, "text-to-image", Some("b")));
        assert!(!allows(&k, "image-to-image", Some("a")));
        assert_eq!(windows("pro")[0].limit, 100);
        assert_eq!(windows("enterprise")[1].limit, 100_000);
    }
}
