//! A small signing client for the admin API (V3, `ACS3-HMAC-SHA256`, as the
//! current SDKs sign), used by `certmq admin` and the tests.
//!
//! Over HTTPS it uses rustls with the broker's crypto provider. It trusts
//! the CA certificates it is given ([`ClientTls::trust_ca_pem`]), or else
//! the system's trust store, and presents a client certificate when given
//! one (for an admin API with `admin.tls_client_ca`).

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::sign;

/// The API version certmq speaks.
pub const VERSION: &str = "2020-04-20";

/// Why a client could not be made, or a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the endpoint {0} is not a URL such as http://127.0.0.1:8080")]
    Endpoint(String),
    /// No answer. `reason` is the whole chain of causes on one line, and
    /// `hint` what to do about the usual TLS mistakes (or empty).
    #[error("the admin API at {endpoint} did not answer: {reason}{hint}")]
    Http {
        endpoint: String,
        reason: String,
        hint: String,
    },
    #[error("{what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("the TLS client configuration is inconsistent: {reason}")]
    Tls { reason: rustls::Error },
    #[error("the admin API answered with something that is not JSON: {0}")]
    NotJson(String),
    #[error("cannot encode the call's parameters: {0}")]
    Encode(String),
}

/// Parameters longer than this (canonical query bytes) are sent as a form
/// body rather than in the URL.
const FORM_BODY_ABOVE: usize = 4096;

const FORM: &str = "application/x-www-form-urlencoded";

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

/// What an HTTPS client trusts and presents.
#[derive(Debug, Default)]
pub struct ClientTls {
    /// CA certificates trusted instead of the system's (none: the system's).
    roots: Option<rustls::RootCertStore>,
    /// A client certificate chain and its key (mutual TLS).
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl ClientTls {
    pub fn new() -> Self {
        ClientTls::default()
    }

    /// Trusts the CA certificates in `pem` (instead of the system's trust
    /// store); `source` names them in errors (a path, say).
    pub fn trust_ca_pem(mut self, pem: &[u8], source: &str) -> Result<Self, ClientError> {
        let roots = self.roots.get_or_insert_with(rustls::RootCertStore::empty);
        for der in certs_from_pem("the CA file", source, pem)? {
            roots.add(der).map_err(|e| ClientError::TlsFile {
                what: "the CA file",
                path: source.to_owned(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(self)
    }

    /// [`ClientTls::trust_ca_pem`] on a file (read now).
    pub fn trust_ca_file(self, path: &Path) -> Result<Self, ClientError> {
        let pem = read("the CA file", path)?;
        self.trust_ca_pem(&pem, &path.display().to_string())
    }

    /// Presents this certificate chain (PEM, leaf first) and key (PEM).
    pub fn identity_pem(
        mut self,
        cert_pem: &[u8],
        key_pem: &[u8],
        source: &str,
    ) -> Result<Self, ClientError> {
        let chain = certs_from_pem("the client certificate", source, cert_pem)?;
        let key_error = |reason: String| ClientError::TlsFile {
            what: "the client key",
            path: source.to_owned(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| key_error(format!("not a PEM private key: {e}")))?;
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key.clone_key(),
            &crate::tls::provider(),
        )
        .map_err(|e| key_error(format!("is not the key of the client certificate: {e}")))?;
        self.identity = Some((chain, key));
        Ok(self)
    }

    /// [`ClientTls::identity_pem`] on files (read now).
    pub fn identity_files(self, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let cert_pem = read("the client certificate", cert)?;
        let key_pem = read("the client key", key)?;
        let source = format!("{} / {}", cert.display(), key.display());
        self.identity_pem(&cert_pem, &key_pem, &source)
    }

    /// Whether a client certificate is given.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether this asks for anything beyond the defaults.
    pub fn is_default(&self) -> bool {
        self.roots.is_none() && self.identity.is_none()
    }

    /// The rustls configuration. The system's trust store is read only for
    /// HTTPS without a CA of its own.
    fn client_config(self, https: bool) -> Result<rustls::ClientConfig, ClientError> {
        let roots = self.roots.unwrap_or_else(|| {
            let mut roots = rustls::RootCertStore::empty();
            if https {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
            roots
        });
        let inconsistent = |reason| ClientError::Tls { reason };
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(inconsistent)?
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(inconsistent)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::TlsFile {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn certs_from_pem(
    what: &'static str,
    source: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let fail = |reason: String| ClientError::TlsFile {
        what,
        path: source.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Calls the admin API with one access key.
#[derive(Clone)]
pub struct AdminClient {
    endpoint: String,
    authority: String,
    key_id: String,
    secret: String,
    http: reqwest::Client,
    /// Whether it presents a client certificate (for error hints).
    has_identity: bool,
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
    /// `endpoint` like `http://127.0.0.1:8080` (a bare `host:port` means
    /// http); HTTPS trusts the system's trust store.
    pub fn new(endpoint: &str, key_id: &str, secret: &str) -> Result<Self, ClientError> {
        Self::with_tls(endpoint, key_id, secret, ClientTls::new())
    }

    /// [`AdminClient::new`] with the CA to trust and the client certificate
    /// to present over HTTPS. `tls` must be the default for an http
    /// endpoint: a CA or a certificate there would be silently unused.
    pub fn with_tls(
        endpoint: &str,
        key_id: &str,
        secret: &str,
        tls: ClientTls,
    ) -> Result<Self, ClientError> {
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
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(ClientError::Endpoint(endpoint)),
        };
        if !https && !tls.is_default() {
            return Err(ClientError::TlsFile {
                what: "the endpoint",
                path: endpoint,
                reason: "is plain http: a CA file or client certificate applies to https:// endpoints only".into(),
            });
        }
        let has_identity = tls.has_identity();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .use_preconfigured_tls(tls.client_config(https)?)
            .build()
            .map_err(|e| http_error(&endpoint, &e, has_identity))?;
        Ok(AdminClient {
            endpoint,
            authority,
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
            http,
            has_identity,
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
        // Long parameters (a CRL) go in a form body, covered by the
        // signature through its hash and the signed content type: a URL
        // that long may not get through.
        let in_body = sign::canonical_query(params).len() > FORM_BODY_ABOVE;
        let (query, body): (&[(String, String)], Vec<u8>) = if in_body {
            let form = serde_urlencoded::to_string(params)
                .map_err(|e| ClientError::Encode(e.to_string()))?;
            (&[], form.into_bytes())
        } else {
            (params, Vec::new())
        };
        let payload = sign::sha256_hex(&body);
        let mut headers: Vec<(&str, String)> = Vec::new();
        if in_body {
            headers.push(("content-type", FORM.to_owned()));
        }
        headers.extend([
            ("host", self.authority.clone()),
            ("x-acs-action", action.to_owned()),
            ("x-acs-content-sha256", payload.clone()),
            ("x-acs-date", date),
            ("x-acs-signature-nonce", nonce),
            ("x-acs-version", VERSION.to_owned()),
        ]);
        let signed: Vec<String> = headers.iter().map(|(k, _)| (*k).to_owned()).collect();
        let canonical = sign::v3_canonical_request(
            "POST",
            "/",
            query,
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
        let url = match query.is_empty() {
            true => format!("{}/", self.endpoint),
            false => format!("{}/?{}", self.endpoint, sign::canonical_query(query)),
        };
        let mut request = self.http.post(url).header("authorization", authorization);
        for (name, value) in headers.iter().filter(|(k, _)| *k != "host") {
            request = request.header(*name, value);
        }
        self.answer(request.body(body)).await
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
        let response = request
            .send()
            .await
            .map_err(|e| http_error(&self.endpoint, &e, self.has_identity))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| http_error(&self.endpoint, &e, self.has_identity))?;
        let body = serde_json::from_str(&text)
            .map_err(|_| ClientError::NotJson(text.chars().take(200).collect()))?;
        Ok((status, body))
    }
}

/// The rustls error in `e`. The TLS layers wrap it in `io::Error`s (one in
/// another), whose `source()` skips what they wrap: look inside.
fn rustls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// The error, its causes on one line, and a hint for the usual TLS
/// mistakes. `has_identity`: the client presented a certificate.
fn http_error(endpoint: &str, error: &reqwest::Error, has_identity: bool) -> ClientError {
    let mut reason = error.to_string();
    let mut cause = error.source();
    let mut tls = None;
    let mut closed = false;
    while let Some(e) = cause {
        let text = e.to_string();
        if !reason.ends_with(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        if tls.is_none() {
            tls = rustls_error(e).cloned();
        }
        closed |= e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            )
        }) || text.contains("connection closed before message completed")
            // hyper's pool saw the connection close before it could send
            // (the server hung up right after the handshake).
            || text.contains("connection was not ready");
        cause = e.source();
    }
    let hint = match tls {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            " (the admin API's certificate is not from a CA this client trusts: give the CA that issued it, `certmq admin --ca-file`)"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => {
            " (the endpoint's host is not a name in the admin API's certificate: use one of its names in the endpoint)"
        }
        Some(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA,
        )) => {
            " (the admin API refused the handshake: it may require a client certificate from its admin.tls_client_ca, `certmq admin --client-cert --client-key`)"
        }
        // In TLS 1.3 a refused client certificate is seen after the
        // handshake: the alert may lose the race with the request, and the
        // client sees the connection closed instead.
        None if endpoint.starts_with("https:") && !has_identity && closed => {
            " (the admin API closed the connection: it may require a client certificate from its admin.tls_client_ca, `certmq admin --client-cert --client-key`)"
        }
        Some(rustls::Error::InvalidMessage(_)) if endpoint.starts_with("https:") => {
            " (is the admin API plain HTTP? then use an http:// endpoint)"
        }
        None if endpoint.starts_with("http:") && !error.is_connect() && !error.is_timeout() => {
            " (if the admin API is HTTPS, with admin.tls_cert set, use an https:// endpoint)"
        }
        _ => "",
    };
    ClientError::Http {
        endpoint: endpoint.to_owned(),
        reason,
        hint: hint.to_owned(),
    }
}
