//! A small signing client for the admin API (V3, `ACS3-HMAC-SHA256`, as the
//! current SDKs sign), used by `certmq admin` and the tests.

use std::time::Duration;

use serde_json::Value;

use super::sign;

/// The API version certmq speaks.
pub const VERSION: &str = "2020-04-20";

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the endpoint {0} is not a URL such as http://127.0.0.1:8080")]
    Endpoint(String),
    #[error("the admin API at {endpoint} did not answer: {source}")]
    Http {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("the admin API answered with something that is not JSON: {0}")]
    NotJson(String),
}

/// Choices a test may force on a signed call.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The timestamp (ISO 8601 UTC).
    pub date: Option<String>,
    pub nonce: Option<String>,
    /// Sign with this secret instead of the key's.
    pub secret: Option<String>,
}

/// Now, as `2026-11-26T01:02:03Z`.
pub fn now_iso8601() -> String {
    iso8601(time::OffsetDateTime::now_utc())
}

pub fn iso8601(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Calls the admin API with one access key.
#[derive(Clone)]
pub struct AdminClient {
    endpoint: String,
    authority: String,
    key_id: String,
    secret: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("endpoint", &self.endpoint)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// `endpoint` like `http://127.0.0.1:8080` (a bare `host:port` means http).
    pub fn new(endpoint: &str, key_id: &str, secret: &str) -> Result<Self, ClientError> {
        let endpoint = if endpoint.contains("://") {
            endpoint.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", endpoint.trim_end_matches('/'))
        };
        let url =
            reqwest::Url::parse(&endpoint).map_err(|_| ClientError::Endpoint(endpoint.clone()))?;
        let host = url
            .host_str()
            .ok_or_else(|| ClientError::Endpoint(endpoint.clone()))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| ClientError::Http {
                endpoint: endpoint.clone(),
                source,
            })?;
        Ok(AdminClient {
            endpoint,
            authority,
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
            http,
        })
    }

    /// Calls `action` with `params` (in the query string, as the SDKs send
    /// them), signed with V3. Returns the HTTP status and the JSON answer.
    pub async fn call(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<(u16, Value), ClientError> {
        self.call_with(action, params, &Overrides::default()).await
    }

    /// [`AdminClient::call`] with a chosen timestamp, nonce or secret (for
    /// testing refusals).
    pub async fn call_with(
        &self,
        action: &str,
        params: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<(u16, Value), ClientError> {
        let date = overrides.date.clone().unwrap_or_else(now_iso8601);
        let nonce = overrides
            .nonce
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let secret = overrides.secret.as_deref().unwrap_or(&self.secret);
        let payload = sign::sha256_hex(b"");
        let headers: Vec<(&str, String)> = vec![
            ("host", self.authority.clone()),
            ("x-acs-action", action.to_owned()),
            ("x-acs-content-sha256", payload.clone()),
            ("x-acs-date", date),
            ("x-acs-signature-nonce", nonce),
            ("x-acs-version", VERSION.to_owned()),
        ];
        let signed: Vec<String> = headers.iter().map(|(k, _)| (*k).to_owned()).collect();
        let canonical = sign::v3_canonical_request(
            "POST",
            "/",
            params,
            &signed,
            |name| {
                headers
                    .iter()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
                    .collect()
            },
            &payload,
        );
        let signature = sign::v3_signature(secret, &sign::v3_string_to_sign(&canonical));
        let authorization = format!(
            "{} Credential={},SignedHeaders={},Signature={signature}",
            sign::V3_ALGORITHM,
            self.key_id,
            signed.join(";")
        );
        let url = format!("{}/?{}", self.endpoint, sign::canonical_query(params));
        let mut request = self.http.post(url).header("authorization", authorization);
        for (name, value) in headers.iter().filter(|(k, _)| *k != "host") {
            request = request.header(*name, value);
        }
        self.answer(request).await
    }

    /// Calls with the legacy V1 scheme (`HMAC-SHA1`, parameters in the query
    /// string): `params` should include `Action` (it is left out only to
    /// test that refusal).
    pub async fn call_v1(
        &self,
        params: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<(u16, Value), ClientError> {
        let mut all: Vec<(String, String)> = params.to_vec();
        let common = [
            ("Format", "JSON".to_owned()),
            ("Version", VERSION.to_owned()),
            ("AccessKeyId", self.key_id.clone()),
            ("SignatureMethod", "HMAC-SHA1".to_owned()),
            ("SignatureVersion", "1.0".to_owned()),
            (
                "SignatureNonce",
                overrides
                    .nonce
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            ),
            (
                "Timestamp",
                overrides.date.clone().unwrap_or_else(now_iso8601),
            ),
        ];
        all.extend(common.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let secret = overrides.secret.as_deref().unwrap_or(&self.secret);
        let signature = sign::v1_signature(secret, &sign::v1_string_to_sign("GET", &all));
        all.push(("Signature".to_owned(), signature));
        let url = format!("{}/?{}", self.endpoint, sign::canonical_query(&all));
        self.answer(self.http.get(url)).await
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), ClientError> {
        let response = request.send().await.map_err(|source| ClientError::Http {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|source| ClientError::Http {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        let body = serde_json::from_str(&text)
            .map_err(|_| ClientError::NotJson(text.chars().take(200).collect()))?;
        Ok((status, body))
    }
}
