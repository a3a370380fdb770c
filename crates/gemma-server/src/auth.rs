//! Authentication and rate limiting: `Authorization: Bearer` API keys compared in constant time, HS256 JWTs
//! (signature, `exp`, `nbf`), and a token bucket per caller. Keys and tokens never reach a log: callers are
//! named by a key's position or a token's `sub`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header (expected 'Bearer <key>')")]
    Missing,
    #[error("the Authorization header is not 'Bearer <key>'")]
    Malformed,
    #[error("invalid API key")]
    InvalidKey,
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
}

/// Who made a request, as far as the logs and the rate limiter are concerned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    Anonymous,
    /// The n-th configured API key.
    Key(usize),
    /// A JWT's subject (or a hash of the token when it has none).
    Token(String),
}

pub struct Authenticator {
    /// SHA-256 of each key: comparing digests keeps the comparison constant-time whatever the lengths.
    key_digests: Vec<[u8; 32]>,
    jwt_secret: Option<Vec<u8>>,
}

impl Authenticator {
    pub fn new(keys: &[String], jwt_secret: Option<&str>) -> Authenticator {
        Authenticator {
            key_digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect(),
            jwt_secret: jwt_secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    pub fn required(&self) -> bool {
        !self.key_digests.is_empty() || self.jwt_secret.is_some()
    }

    /// Checks the value of an `Authorization` header.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Caller, AuthError> {
        if !self.required() {
            return Ok(Caller::Anonymous);
        }
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, credential) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let credential = credential.trim();
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        // Every key is compared, so the time taken does not tell which one (if any) matched.
        let mut matched = None;
        for (i, k) in self.key_digests.iter().enumerate() {
            if bool::from(k.ct_eq(&digest)) {
                matched = Some(i);
            }
        }
        if let Some(i) = matched {
            return Ok(Caller::Key(i));
        }
        match &self.jwt_secret {
            Some(secret) if credential.matches('.').count() == 2 => verify_jwt(credential, secret, unix_now()),
            _ => Err(AuthError::InvalidKey),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Verifies an HS256 JWT at time `now` (seconds since the epoch) and names its caller.
pub fn verify_jwt(token: &str, secret: &[u8], now: u64) -> Result<Caller, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::InvalidToken("not three dot-separated parts"));
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let header: serde_json::Value = decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::InvalidToken("bad header"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::InvalidToken("only HS256 is accepted"));
    }
    let signature = decode(signature).map_err(|_| AuthError::InvalidToken("bad signature encoding"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::InvalidToken("unusable secret"))?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    mac.update(token.as_bytes().get(..signed_len).unwrap_or_default());
    mac.verify_slice(&signature).map_err(|_| AuthError::InvalidToken("bad signature"))?;
    let claims: serde_json::Value = decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::InvalidToken("bad payload"))?;
    let time_claim = |name: &str| -> Result<Option<u64>, AuthError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(AuthError::InvalidToken("a time claim is not a number")),
        }
    };
    match time_claim("exp")? {
        Some(exp) if now >= exp => return Err(AuthError::InvalidToken("expired")),
        None => return Err(AuthError::InvalidToken("no 'exp' claim")),
        _ => {}
    }
    if time_claim("nbf")?.is_some_and(|nbf| now < nbf) {
        return Err(AuthError::InvalidToken("not valid yet"));
    }
    let subject = match claims.get("sub").and_then(|s| s.as_str()) {
        Some(sub) => sub.to_string(),
        None => {
            let d = Sha256::digest(token.as_bytes());
            d.iter().take(8).map(|b| format!("{b:02x}")).collect()
        }
    };
    Ok(Caller::Token(subject))
}

/// A token bucket per caller: `per_minute` requests a minute on average, bursts up to `per_minute`.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<Caller, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute: per_minute.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `caller`'s bucket, or says how long until one is available.
    pub fn check(&self, caller: &Caller, now: Instant) -> Result<(), Duration> {
        let capacity = self.per_minute as f64;
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets so that many distinct token subjects cannot grow the map without bound.
            buckets.retain(|_, (level, at)| *level + now.duration_since(*at).as_secs_f64() * per_sec < capacity);
        }
        let (level, at) = buckets.entry(caller.clone()).or_insert((capacity, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / per_sec))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Signs `claims` with HS256 (what a token issuer does).
    pub(crate) fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn keys_match_exactly() {
        let a = Authenticator::new(&["alpha".into(), "beta".into()], None);
        assert_eq!(a.check(Some(b"Bearer beta")), Ok(Caller::Key(1)));
        assert_eq!(a.check(Some(b"bearer alpha")), Ok(Caller::Key(0)));
        assert_eq!(a.check(Some(b"Bearer alph")), Err(AuthError::InvalidKey));
        assert_eq!(a.check(Some(b"Bearer alphaa")), Err(AuthError::InvalidKey));
        assert_eq!(a.check(Some(b"Basic alpha")), Err(AuthError::Malformed));
        assert_eq!(a.check(Some(b"\xff\xfe")), Err(AuthError::Malformed));
        assert_eq!(a.check(None), Err(AuthError::Missing));
        assert_eq!(Authenticator::new(&[], None).check(None), Ok(Caller::Anonymous));
    }

    #[test]
    fn jwt_signature_exp_and_nbf_are_checked() {
        let secret = b"a secret of at least sixteen bytes";
        let now = 1_700_000_000u64;
        let ok = sign(&serde_json::json!({"sub": "ann", "exp": now + 60, "nbf": now - 60}), secret);
        assert_eq!(verify_jwt(&ok, secret, now), Ok(Caller::Token("ann".into())));
        assert_eq!(
            verify_jwt(&ok, b"another secret of sixteen bytes", now),
            Err(AuthError::InvalidToken("bad signature"))
        );
        let expired = sign(&serde_json::json!({"exp": now}), secret);
        assert_eq!(verify_jwt(&expired, secret, now), Err(AuthError::InvalidToken("expired")));
        let early = sign(&serde_json::json!({"exp": now + 60, "nbf": now + 10}), secret);
        assert_eq!(verify_jwt(&early, secret, now), Err(AuthError::InvalidToken("not valid yet")));
        let no_exp = sign(&serde_json::json!({"sub": "x"}), secret);
        assert!(verify_jwt(&no_exp, secret, now).is_err());
        // A payload swapped under a valid signature fails.
        let other = sign(&serde_json::json!({"sub": "eve", "exp": now + 60}), secret);
        let forged = format!(
            "{}.{}.{}",
            ok.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            ok.split('.').nth(2).unwrap()
        );
        assert_eq!(verify_jwt(&forged, secret, now), Err(AuthError::InvalidToken("bad signature")));
        // alg "none" is refused.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), ok.split('.').nth(1).unwrap());
        assert!(verify_jwt(&none, secret, now).is_err());
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let rl = RateLimiter::new(2);
        let t0 = Instant::now();
        let c = Caller::Key(0);
        assert!(rl.check(&c, t0).is_ok());
        assert!(rl.check(&c, t0).is_ok());
        let wait = rl.check(&c, t0).unwrap_err();
        assert!((29.0..=30.5).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(rl.check(&Caller::Key(1), t0).is_ok(), "buckets are per caller");
        assert!(rl.check(&c, t0 + Duration::from_secs(31)).is_ok());
    }
}
