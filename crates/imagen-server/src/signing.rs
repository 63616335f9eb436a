//! HMAC-SHA256 signatures: webhook bodies, and image URLs that work without the API key until
//! they expire.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::Result;
use crate::keys::random_hex;

pub fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// `X-Imagen-Signature` for a webhook: `sha256=` + hex HMAC(secret, "<timestamp>.<body>").
pub fn webhook_signature(secret: &str, timestamp: u64, body: &str) -> String {
    format!(
        "sha256={}",
        hmac_hex(secret.as_bytes(), format!("{timestamp}.{body}").as_bytes())
    )
}

/// The key of a Standard Webhooks signature: a `whsec_`-prefixed secret is base64 after the
/// prefix (the scheme's convention); any other secret is used as its raw bytes (receivers pass
/// them as bytes to their verifier).
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    use base64::Engine as _;
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `webhook-signature` of the Standard Webhooks scheme (standardwebhooks.com):
/// `v1,` + base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>").
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: u64, body: &str) -> String {
    use base64::Engine as _;
    let key = standard_webhooks_key(secret);
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Constant-time comparison of two hex strings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's own secret (signs image URLs), created on first start in the data directory.
pub fn server_secret(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("server.secret");
    if let Ok(s) = std::fs::read_to_string(&path)
        && s.trim().len() >= 32
    {
        return Ok(s.trim().to_owned());
    }
    let secret = random_hex(32)?;
    std::fs::write(&path, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// Signature of an image path (`{generation}/{file}`) valid until `expires` (unix seconds).
pub fn url_signature(secret: &str, path: &str, expires: u64) -> String {
    hmac_hex(secret.as_bytes(), format!("{path}:{expires}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_matches_rfc4231() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(webhook_signature("s", 1, "{}").starts_with("sha256="));
        assert!(same("ab", "ab") && !same("ab", "ac") && !same("ab", "abc"));
    }

    /// The example of the Standard Webhooks reference libraries' tests
    /// (`standard-webhooks/libraries`, python/tests: msg_p5jXN8AQM9LWM0D4loKWxJek, 1614265330).
    #[test]
    fn standard_webhooks_signature_matches_the_reference() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            standard_webhooks_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
