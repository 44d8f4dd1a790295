//! Account ids that never leave the site: with `recaptcha.account_id_hmac_key`, an event's
//! `account_id` is sent as `hashedAccountId`, the HMAC-SHA256 of the id under the site's
//! key. The same id always hashes the same, so Google can still link an account's
//! assessments and annotations; without the key, nobody can reverse it or test a guess.

use aws_lc_rs::hmac;
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};

use super::api::AnnotateRequest;

/// Hashes account ids under one key.
#[derive(Clone)]
pub struct AccountHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for AccountHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountHasher([redacted])")
    }
}

impl AccountHasher {
    pub fn new(key: &SecretString) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret().as_bytes()),
        }
    }

    /// `hashedAccountId` for `account_id`: the 32 bytes of HMAC-SHA256, as proto3 JSON sends
    /// bytes (standard base64).
    pub fn hash(&self, account_id: &str) -> String {
        let tag = hmac::sign(&self.key, account_id.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// Takes `accountId` out of `request`. It becomes `hashedAccountId` unless the event
    /// already carried one (the producer's own hash wins); either way the raw id is not sent.
    pub fn apply(&self, request: &mut AnnotateRequest) {
        if let Some(id) = request.account_id.take()
            && request.hashed_account_id.is_none()
        {
            request.hashed_account_id = Some(self.hash(&id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_hmac_sha256_in_base64() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let hasher = AccountHasher::new(&SecretString::from("Jefe"));
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(hasher.hash("what do ya want for nothing?"))
            .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn the_raw_account_id_is_never_left_in_the_request() {
        let hasher = AccountHasher::new(&SecretString::from("site-key"));
        let mut request = AnnotateRequest {
            account_id: Some("user-123".into()),
            ..AnnotateRequest::default()
        };
        hasher.apply(&mut request);
        assert_eq!(request.account_id, None);
        assert_eq!(request.hashed_account_id, Some(hasher.hash("user-123")));
        let body = serde_json::to_string(&request).unwrap();
        assert!(!body.contains("user-123"), "{body}");

        // The producer's own hash is kept; the raw id still goes.
        let mut request = AnnotateRequest {
            account_id: Some("user-123".into()),
            hashed_account_id: Some("AQI=".into()),
            ..AnnotateRequest::default()
        };
        hasher.apply(&mut request);
        assert_eq!(request.account_id, None);
        assert_eq!(request.hashed_account_id.as_deref(), Some("AQI="));
    }
}
