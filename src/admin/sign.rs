//! The two request signature algorithms of the Alibaba Cloud RPC API, as the
//! official SDKs compute them. Shared by the server (verification) and the
//! `certmq admin` client (signing). Pinned by tests against vectors that the
//! SDKs' own code produced (`tests/fixtures/signatures.json`).
//!
//! - V3, `ACS3-HMAC-SHA256`: a canonical request (method, path, sorted
//!   query, the headers the client chose to sign, payload hash), hashed,
//!   then HMAC-SHA256 with the secret; hex.
//! - V1, `HMAC-SHA1`: `METHOD&%2F&` + the percent-encoded, sorted,
//!   percent-encoded parameters; HMAC-SHA1 with `secret&`; Base64.

use aws_lc_rs::{digest, hmac};
use base64::Engine;

/// The V3 algorithm name, first word of the Authorization header.
pub const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// RFC 3986 percent-encoding: `A-Za-z0-9-_.~` stay, everything else is
/// `%XX` (so a space is `%20`, `*` is `%2A`).
pub fn pct(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// `k=v&k=v`, sorted by key then value, both percent-encoded.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The V3 canonical request. `headers` yields, for each signed header name
/// in the order of `signed_headers`, its values.
pub fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    signed_headers: &[String],
    header_values: impl Fn(&str) -> Vec<String>,
    payload_sha256_hex: &str,
) -> String {
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let mut values: Vec<String> = header_values(name)
            .iter()
            .map(|v| v.trim().to_owned())
            .collect();
        values.sort();
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&values.join(","));
        canonical_headers.push('\n');
    }
    format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{}\n{payload_sha256_hex}",
        canonical_query(query),
        signed_headers.join(";")
    )
}

/// `ACS3-HMAC-SHA256\n` + hex SHA-256 of the canonical request.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Hex HMAC-SHA256 of the string to sign.
pub fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(hmac::sign(&key, string_to_sign.as_bytes()))
}

/// Checks a hex V3 signature in constant time.
pub fn v3_verify(secret: &str, string_to_sign: &str, signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, string_to_sign.as_bytes(), &signature).is_ok()
}

/// The V1 string to sign over every parameter but `Signature`.
pub fn v1_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> =
        params.iter().filter(|(k, _)| k != "Signature").collect();
    // The SDK sorts by key only, keeping the order of equal keys.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let joined = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{method}&%2F&{}", pct(&joined))
}

/// Base64 HMAC-SHA1 keyed with `secret&`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        format!("{secret}&").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, string_to_sign.as_bytes()))
}

/// Checks a Base64 V1 signature in constant time.
pub fn v1_verify(secret: &str, string_to_sign: &str, signature_b64: &str) -> bool {
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
        return false;
    };
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        format!("{secret}&").as_bytes(),
    );
    hmac::verify(&key, string_to_sign.as_bytes(), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_is_rfc3986() {
        assert_eq!(
            pct("a b*c~d-e_f.g/h+i=j&"),
            "a%20b%2Ac~d-e_f.g%2Fh%2Bi%3Dj%26"
        );
        assert_eq!(pct("é"), "%C3%A9");
    }

    #[test]
    fn verification_accepts_only_the_right_signature() {
        let sts = "ACS3-HMAC-SHA256\nabc";
        let sig = v3_signature("secret", sts);
        assert!(v3_verify("secret", sts, &sig));
        assert!(!v3_verify("secret2", sts, &sig));
        assert!(!v3_verify("secret", sts, "zz"));
        let sts1 = "GET&%2F&A%3D1";
        let sig1 = v1_signature("secret", sts1);
        assert!(v1_verify("secret", sts1, &sig1));
        assert!(!v1_verify("secret", "GET&%2F&A%3D2", &sig1));
        assert!(!v1_verify("secret", sts1, "not base64!"));
    }
}
