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
}
