//! Signed tokens, as `Phoenix.Token` gives every Phoenix app: sign a value with a secret and
//! a salt, hand it to a page, and verify it (with a maximum age) when the page's socket
//! connects, so a channel never trusts a name the client made up.
//!
//! A token is `v1.<payload>.<salt id>.<signature>`, each part base64url without padding: the
//! payload is JSON `{"d": <the value>, "t": <signed at, ms since the Unix epoch>}`; the
//! signature is HMAC-SHA256 over `v1.<payload>.<salt id>` with a key derived from the secret
//! and the salt. Tokens are signed, not encrypted: the value is readable by whoever holds the
//! token, so put an id in it, not a secret.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

const VERSION: &str = "v1";

/// How far in the future a token may have been signed and still verify: the clock of the node
/// that signed it may be ahead of the verifying node's (`Phoenix.Token` does not refuse
/// tokens from the future at all). A token from further ahead is [`TokenError::Expired`].
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a token was refused, or a signer not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format.
    #[error("malformed token")]
    Malformed,
    /// Signed for another salt (another purpose): e.g. a long-poll session token used as a
    /// user token.
    #[error("token signed for another salt")]
    WrongSalt,
    /// The signature does not match: the token was altered, or signed with another secret.
    #[error("invalid token signature")]
    Invalid,
    /// Older than the maximum age, or signed more than [`MAX_CLOCK_SKEW`] in the future.
    #[error("token expired")]
    Expired,
    /// The signed value does not decode into the type asked for.
    #[error("token value does not decode: {0}")]
    Decode(String),
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("secret too short: at least {MIN_SECRET_LEN} bytes are needed")]
    WeakSecret,
}

/// Signs and verifies tokens for one purpose (a salt) with the application's secret.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use presence_poem::{TokenError, TokenSigner};
///
/// let secret = b"a secret of at least thirty-two bytes, from the app's configuration";
/// let users = TokenSigner::new(secret, "user socket")?;
/// let token = users.sign(&42_u64);
/// let id: u64 = users.verify(&token, Duration::from_secs(86_400))?;
/// assert_eq!(id, 42);
///
/// let sessions = TokenSigner::new(secret, "session")?;
/// assert_eq!(sessions.verify::<u64>(&token, Duration::from_secs(60)), Err(TokenError::WrongSalt));
/// # Ok::<(), TokenError>(())
/// ```
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
    salt_id: String,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("salt_id", &self.salt_id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `salt` with `secret`.
    ///
    /// # Errors
    ///
    /// [`TokenError::WeakSecret`] when `secret` has fewer than [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8], salt: &str) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::WeakSecret)?;
        mac.update(b"presence-poem token key\0");
        mac.update(salt.as_bytes());
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let salt_hash = Sha256::digest(salt.as_bytes());
        Ok(TokenSigner {
            key,
            salt_id: URL_SAFE_NO_PAD.encode(&salt_hash[..6]),
        })
    }

    /// Signs `value` now.
    pub fn sign<T: Serialize + ?Sized>(&self, value: &T) -> String {
        self.sign_at(value, SystemTime::now())
    }

    /// Signs `value` as if at `signed_at` (for tests of expiry).
    pub fn sign_at<T: Serialize + ?Sized>(&self, value: &T, signed_at: SystemTime) -> String {
        let t = signed_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Serializing a serde value into a JSON `Value` fails only for maps with non-string
        // keys; such a value is signed as null.
        let payload =
            serde_json::json!({"d": serde_json::to_value(value).unwrap_or_default(), "t": t});
        let body = format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            self.salt_id
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&body).finalize().into_bytes());
        format!("{body}.{signature}")
    }

    /// Verifies `token` and decodes its value; it must be at most `max_age` old. A token
    /// signed up to [`MAX_CLOCK_SKEW`] (60 s) in the future verifies, as the signing node's
    /// clock may be ahead of this one's.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`], [`TokenError::WrongSalt`], [`TokenError::Invalid`] (the
    /// signature is checked in constant time), [`TokenError::Expired`], or
    /// [`TokenError::Decode`].
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        max_age: Duration,
    ) -> Result<T, TokenError> {
        self.verify_at(token, max_age, SystemTime::now())
    }

    fn verify_at<T: DeserializeOwned>(
        &self,
        token: &str,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<T, TokenError> {
        let (body, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some(VERSION), Some(payload), Some(salt_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        if salt_id != self.salt_id {
            return Err(TokenError::WrongSalt);
        }
        self.mac(body)
            .verify_slice(&signature)
            .map_err(|_| TokenError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let payload: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let signed_at = payload["t"].as_u64().ok_or(TokenError::Malformed)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if u128::from(signed_at) > u128::from(now) + MAX_CLOCK_SKEW.as_millis() {
            return Err(TokenError::Expired);
        }
        // Signed "in the future", within the skew: as young as can be.
        let age = now.saturating_sub(signed_at);
        if u128::from(age) > max_age.as_millis() {
            return Err(TokenError::Expired);
        }
        serde_json::from_value(payload["d"].clone()).map_err(|e| TokenError::Decode(e.to_string()))
    }

    fn mac(&self, body: &str) -> HmacSha256 {
        // A 32-byte key is always accepted.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(body.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    #[test]
    fn round_trip_and_distinct_errors() {
        let signer = TokenSigner::new(SECRET, "user").unwrap();
        let token = signer.sign(&serde_json::json!({"id": 7, "name": "ann"}));
        let value: serde_json::Value = signer.verify(&token, Duration::from_secs(60)).unwrap();
        assert_eq!(value["id"], 7);

        // Expired: signed two minutes ago, valid for one.
        let old = signer.sign_at(&7, SystemTime::now() - Duration::from_secs(120));
        assert_eq!(
            signer.verify::<u32>(&old, Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        // Signed a little in the future (the signing node's clock ahead of this one's):
        // accepted, up to a minute.
        for ahead in [1, 500, 59_000] {
            let skewed = signer.sign_at(&7, SystemTime::now() + Duration::from_millis(ahead));
            assert_eq!(
                signer.verify::<u32>(&skewed, Duration::from_secs(60)),
                Ok(7),
                "{ahead}"
            );
        }
        // Further in the future is not "young".
        let future = signer.sign_at(&7, SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(
            signer.verify::<u32>(&future, Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        // Wrong salt.
        let other = TokenSigner::new(SECRET, "session").unwrap();
        assert_eq!(
            other.verify::<u32>(&token, Duration::from_secs(60)),
            Err(TokenError::WrongSalt)
        );
        // Wrong secret, same salt.
        let forger = TokenSigner::new(b"another secret, also long enough!!", "user").unwrap();
        assert_eq!(
            signer.verify::<u32>(&forger.sign(&7), Duration::from_secs(60)),
            Err(TokenError::Invalid)
        );
        // Tampered payload: the id changed, the signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(r#"{"d":{"id":1},"t":0}"#);
        let tampered = format!("{}.{}.{}.{}", parts[0], forged_payload, parts[2], parts[3]);
        assert_eq!(
            signer.verify::<serde_json::Value>(&tampered, Duration::from_secs(60)),
            Err(TokenError::Invalid)
        );
        // Malformed.
        for bad in ["", "v1", "v1.a.b", "v2.a.b.c", "v1.a.b.c.d", "v1.!!.x.y"] {
            assert_eq!(
                signer.verify::<u32>(bad, Duration::from_secs(60)),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        // A value of another type.
        assert!(matches!(
            signer.verify::<u32>(&token, Duration::from_secs(60)),
            Err(TokenError::Decode(_))
        ));
        assert_eq!(
            TokenSigner::new(b"short", "user").unwrap_err(),
            TokenError::WeakSecret
        );
    }

    #[test]
    fn debug_shows_no_key() {
        let signer = TokenSigner::new(SECRET, "user").unwrap();
        let shown = format!("{signer:?}");
        assert!(!shown.contains("key"), "{shown}");
    }
}
