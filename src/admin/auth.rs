//! Authentication of admin calls: who signed this request, and is the
//! signature good, fresh and not replayed.
//!
//! Both schemes of the platform are accepted (see [`super::sign`]): V3
//! `ACS3-HMAC-SHA256` in the Authorization header, verified over the
//! headers the client itself listed in SignedHeaders, and V1 `HMAC-SHA1` in
//! the parameters. A request must carry a timestamp within the window
//! (15 minutes either way by default) and a nonce not seen within it.
//! Signatures are compared in constant time. Secrets are never logged: the
//! [`AccessKey`] type does not print its secret.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rpc::{ApiError, RpcRequest};
use super::sign;

/// An access key: who may call the admin API, for which account, with
/// which actions (patterns such as `mq:*` or `mq:Get*`).
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    pub account: String,
    pub actions: Vec<String>,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("account", &self.account)
            .field("actions", &self.actions)
            .finish()
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub access_key_id: String,
    pub account: String,
    pub actions: Arc<[String]>,
}

/// The API version this broker serves; a request must name it.
pub const API_VERSION: &str = "2020-04-20";

/// Headers a V3 request must sign: when, which nonce, and what to do. An
/// unsigned `x-acs-action` would let anyone on the path change the
/// operation of a signed request.
const V3_SIGNED_HEADERS: [&str; 4] = [
    "x-acs-action",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
];

/// A request whose signature checked out, and what it signed.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub caller: Caller,
    /// The operation, read only from the signed part of the request: the
    /// `x-acs-action` header (V3) or the `Action` parameter (V1).
    pub action: String,
}

/// Which signature scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    V3,
    V1,
}

/// Verifies signatures against the configured access keys.
pub struct Authenticator {
    keys: HashMap<String, AccessKey>,
    window: Duration,
    nonces: NonceCache,
}

impl Authenticator {
    pub fn new(keys: Vec<AccessKey>, window: Duration) -> Self {
        Authenticator {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
            window,
            nonces: NonceCache::default(),
        }
    }

    /// The access key id a request claims, before any verification (for
    /// audit records of refused calls).
    pub fn claimed_key_id(req: &RpcRequest) -> Option<String> {
        if let Some(auth) = req.header("authorization") {
            return parse_v3_authorization(auth)
                .ok()
                .map(|a| a.credential.to_owned());
        }
        req.param("AccessKeyId").map(str::to_owned)
    }

    /// Checks the signature, then reads the operation and the API version
    /// from what the scheme signs; a request that names either twice,
    /// differently, is refused.
    pub fn authenticate(&self, req: &RpcRequest) -> Result<Authenticated, ApiError> {
        let (caller, scheme) = if let Some(authorization) = req.header("authorization") {
            (self.v3(req, authorization)?, Scheme::V3)
        } else if req.param("Signature").is_some() || req.param("AccessKeyId").is_some() {
            (self.v1(req)?, Scheme::V1)
        } else {
            return Err(ApiError::MissingAccessKeyId);
        };
        let action =
            signed_name(req, scheme, "action", "Action")?.ok_or(ApiError::MissingAction)?;
        match signed_name(req, scheme, "version", "Version")? {
            Some(version) if version == API_VERSION => {}
            Some(version) => return Err(ApiError::UnsupportedVersion(truncate(&version))),
            None if scheme == Scheme::V3 => {
                return Err(ApiError::MissingParameter("x-acs-version"));
            }
            None => return Err(ApiError::MissingParameter("Version")),
        }
        Ok(Authenticated { caller, action })
    }

    fn key(&self, id: &str) -> Result<&AccessKey, ApiError> {
        self.keys
            .get(id)
            .ok_or_else(|| ApiError::AccessKeyNotFound(id.chars().take(64).collect()))
    }

    fn v3(&self, req: &RpcRequest, authorization: &str) -> Result<Caller, ApiError> {
        let auth = parse_v3_authorization(authorization)?;
        let key = self.key(auth.credential)?;
        for required in V3_SIGNED_HEADERS {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return Err(ApiError::IncompleteSignature(format!(
                    "the header {required} must be sent and listed in SignedHeaders"
                )));
            }
        }
        // The content type decides whether the (signed) body is read as
        // parameters: left unsigned, someone on the path could drop it and
        // with it the body's parameters.
        if !req.body().is_empty()
            && req.header("content-type").is_some()
            && !auth.signed_headers.iter().any(|h| h == "content-type")
        {
            return Err(ApiError::IncompleteSignature(
                "a request with a body must list content-type in SignedHeaders".into(),
            ));
        }
        let date = req.header("x-acs-date").ok_or(ApiError::MissingTimestamp)?;
        let timestamp = self.check_timestamp(date)?;
        let nonce = req
            .header("x-acs-signature-nonce")
            .ok_or(ApiError::MissingNonce)?;
        let canonical = sign::v3_canonical_request(
            req.method(),
            req.path(),
            req.query_pairs(),
            &auth.signed_headers,
            |name| req.header_values(name),
            &sign::sha256_hex(req.body()),
        );
        let string_to_sign = sign::v3_string_to_sign(&canonical);
        if !sign::v3_verify(&key.secret, &string_to_sign, auth.signature) {
            return Err(ApiError::SignatureDoesNotMatch(format!(
                "Server string to sign is: {}",
                string_to_sign.replace('\n', "\\n")
            )));
        }
        self.nonces.claim(&key.id, nonce, timestamp + self.window)?;
        Ok(caller(key))
    }

    fn v1(&self, req: &RpcRequest) -> Result<Caller, ApiError> {
        let key_id = req
            .param("AccessKeyId")
            .ok_or(ApiError::MissingAccessKeyId)?;
        let key = self.key(key_id)?;
        let signature = req.param("Signature").ok_or(ApiError::IncompleteSignature(
            "the Signature parameter is missing".into(),
        ))?;
        match req.param("SignatureMethod") {
            Some("HMAC-SHA1") => {}
            other => {
                return Err(ApiError::IncompleteSignature(format!(
                    "SignatureMethod must be HMAC-SHA1, not {:?}",
                    other.unwrap_or("")
                )));
            }
        }
        let timestamp =
            self.check_timestamp(req.param("Timestamp").ok_or(ApiError::MissingTimestamp)?)?;
        let nonce = req.param("SignatureNonce").ok_or(ApiError::MissingNonce)?;
        let string_to_sign = sign::v1_string_to_sign(req.method(), req.all_params());
        if !sign::v1_verify(&key.secret, &string_to_sign, signature) {
            return Err(ApiError::SignatureDoesNotMatch(format!(
                "Server string to sign is: {string_to_sign}"
            )));
        }
        self.nonces.claim(&key.id, nonce, timestamp + self.window)?;
        Ok(caller(key))
    }

    /// Parses an ISO 8601 UTC timestamp and checks it is within the window.
    fn check_timestamp(&self, value: &str) -> Result<SystemTime, ApiError> {
        let parsed = time::OffsetDateTime::parse(
            value.trim(),
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| ApiError::TimestampFormat(value.chars().take(40).collect()))?;
        let secs =
            u64::try_from(parsed.unix_timestamp()).map_err(|_| ApiError::TimestampExpired)?;
        let timestamp = UNIX_EPOCH + Duration::from_secs(secs);
        let now = SystemTime::now();
        let skew = match now.duration_since(timestamp) {
            Ok(past) => past,
            Err(future) => future.duration(),
        };
        if skew > self.window {
            return Err(ApiError::TimestampExpired);
        }
        Ok(timestamp)
    }
}

/// What a request names in two places (`action`, `version`), from the one
/// its scheme signs: the `x-acs-<what>` header for V3, the `<param>`
/// parameter for V1. The other place, and repeats, must agree with it.
fn signed_name(
    req: &RpcRequest,
    scheme: Scheme,
    what: &'static str,
    param: &'static str,
) -> Result<Option<String>, ApiError> {
    let headers = req.header_values(&format!("x-acs-{what}"));
    let params: Vec<String> = req
        .param_values(param)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (signed, other) = match scheme {
        Scheme::V3 => (headers, params),
        Scheme::V1 => (params, headers),
    };
    let Some(first) = signed.first().map(|v| v.trim()) else {
        if let Some(unsigned) = other.first() {
            return Err(ApiError::Conflicting {
                what,
                param,
                signed: "(none)".into(),
                other: truncate(unsigned),
            });
        }
        return Ok(None);
    };
    if let Some(differing) = signed.iter().chain(&other).find(|v| v.trim() != first) {
        return Err(ApiError::Conflicting {
            what,
            param,
            signed: truncate(first),
            other: truncate(differing),
        });
    }
    Ok(Some(first.to_owned()))
}

/// At most 64 characters of a client's value, for error messages.
fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

fn caller(key: &AccessKey) -> Caller {
    Caller {
        access_key_id: key.id.clone(),
        account: key.account.clone(),
        actions: key.actions.clone().into(),
    }
}

struct V3Authorization<'a> {
    credential: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_v3_authorization(value: &str) -> Result<V3Authorization<'_>, ApiError> {
    let fields = value
        .strip_prefix(sign::V3_ALGORITHM)
        .map(str::trim_start)
        .ok_or_else(|| {
            ApiError::IncompleteSignature(format!(
                "the Authorization header must start with {}",
                sign::V3_ALGORITHM
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing = |what: &str| {
        ApiError::IncompleteSignature(format!("the Authorization header has no {what}"))
    };
    Ok(V3Authorization {
        credential: credential.ok_or_else(|| missing("Credential"))?,
        signed_headers: signed
            .ok_or_else(|| missing("SignedHeaders"))?
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.ok_or_else(|| missing("Signature"))?,
    })
}

/// Nonces seen within the window, per access key.
#[derive(Default)]
struct NonceCache {
    // A std Mutex: the critical section is a hash map operation, never an
    // await.
    seen: Mutex<NonceState>,
}

#[derive(Default)]
struct NonceState {
    expiry: HashMap<(String, String), SystemTime>,
    inserts_since_purge: usize,
}

/// More nonces than this within one window means a flood; refuse rather
/// than grow without bound.
const MAX_NONCES: usize = 2_000_000;

impl NonceCache {
    fn claim(&self, key_id: &str, nonce: &str, expires: SystemTime) -> Result<(), ApiError> {
        let mut state = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        state.inserts_since_purge += 1;
        if state.inserts_since_purge >= 4096 || state.expiry.len() >= MAX_NONCES {
            state.expiry.retain(|_, e| *e > now);
            state.inserts_since_purge = 0;
        }
        if state.expiry.len() >= MAX_NONCES {
            return Err(ApiError::Throttled);
        }
        let entry = (key_id.to_owned(), nonce.to_owned());
        match state.expiry.get(&entry) {
            Some(e) if *e > now => Err(ApiError::NonceUsed),
            _ => {
                state.expiry.insert(entry, expires);
                Ok(())
            }
        }
    }
}

/// Makes a new random access key (id `LTAI` + 20 characters, secret of 30).
pub fn generate_access_key(account: &str) -> AccessKey {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let random = |n: usize| -> String {
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(n)
            .map(char::from)
            .collect()
    };
    AccessKey {
        id: format!("LTAI{}", random(20)),
        secret: random(30),
        account: account.to_owned(),
        actions: vec!["mq:*".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let key = generate_access_key("acct");
        let printed = format!("{key:?}");
        assert!(!printed.contains(&key.secret));
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn nonces_are_single_use_within_their_window() {
        let cache = NonceCache::default();
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(cache.claim("k", "n1", later).is_ok());
        assert_eq!(cache.claim("k", "n1", later), Err(ApiError::NonceUsed));
        assert!(cache.claim("other-key", "n1", later).is_ok());
        // An expired entry no longer blocks (its timestamp would be refused
        // by the window check anyway).
        let past = SystemTime::now() - Duration::from_secs(1);
        assert!(cache.claim("k", "n2", past).is_ok());
        assert!(cache.claim("k", "n2", later).is_ok());
    }

    #[test]
    fn authorization_header_parsing() {
        let a = parse_v3_authorization(
            "ACS3-HMAC-SHA256 Credential=LTAI1,SignedHeaders=host;x-acs-date,Signature=abcd",
        )
        .unwrap();
        assert_eq!(a.credential, "LTAI1");
        assert_eq!(a.signed_headers, ["host", "x-acs-date"]);
        assert_eq!(a.signature, "abcd");
        assert!(parse_v3_authorization("Bearer x").is_err());
        assert!(parse_v3_authorization("ACS3-HMAC-SHA256 Credential=x").is_err());
    }
}
