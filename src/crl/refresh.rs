//! CRL refresh: for each `[[tls.crl]]` source, certmq fetches the CRL (over
//! HTTP(S)) or re-reads it (a file) every `refresh_secs`, verifies it as an
//! import does (signed by that CA, current) and puts it in force
//! ([`super::import::Revoker`]): newly listed devices lose their sessions
//! at once.
//!
//! A refresh that fails (unreachable, not a CRL, expired, signed by
//! another key) changes nothing: the last good CRL's effect stays (a
//! revocation is never undone by a CRL, see `import`). It is logged and
//! counted (`certmq_crl_refresh_failures_total`), and, for a source with
//! `fail_closed = true`, makes `/readyz` answer 503 until a refresh of
//! that source succeeds, so that a load balancer can stop sending devices
//! to a broker whose revocations may be stale.
//!
//! An unchanged CRL (the same bytes) is verified again (it may have
//! expired) but not imported again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounterVec;
use rustls_pki_types::UnixTime;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::MAX_CRL_BYTES;
use super::import::Revoker;
use crate::config::{ConfigError, invalid};
use crate::events::Change;
use crate::serial::CaSn;

/// Most CRL sources.
pub const MAX_SOURCES: usize = 100;
/// `refresh_secs`: at least 1 s, at most a week.
pub const MAX_REFRESH_SECS: u64 = 7 * 24 * 3600;
/// `timeout_secs`: the longest one fetch may take.
pub const MAX_TIMEOUT_SECS: u64 = 300;

/// One `[[tls.crl]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrlSourceSettings {
    /// The CA whose CRL this is: its certificate file (PEM, the first
    /// certificate), or its serial (hex). One of the two.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_sn: Option<String>,
    /// Where the CRL is (PEM or DER): an `http://` or `https://` URL
    /// (system trust roots), or a file. One of the two.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// How often to fetch it, in seconds (default 300).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// How long one fetch may take, in seconds (default 10).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Whether a failing refresh makes `/readyz` answer 503.
    #[serde(default)]
    pub fail_closed: bool,
}

fn default_refresh_secs() -> u64 {
    300
}

fn default_timeout_secs() -> u64 {
    10
}

/// Checks every source, naming the key (`tls.crl[2].url`) that is wrong.
pub fn validate(sources: &[CrlSourceSettings]) -> Result<(), ConfigError> {
    if sources.len() > MAX_SOURCES {
        return Err(invalid(
            "tls.crl",
            format!(
                "{} CRL sources; at most {MAX_SOURCES} are allowed",
                sources.len()
            ),
        ));
    }
    for (i, s) in sources.iter().enumerate() {
        let key = |k: &str| format!("tls.crl[{i}].{k}");
        match (&s.ca_file, &s.ca_sn) {
            (Some(_), Some(_)) => {
                return Err(invalid(key("ca_sn"), "give ca_file or ca_sn, not both"));
            }
            (None, None) => {
                return Err(invalid(
                    key("ca_file"),
                    "missing: name the CA whose CRL this is (ca_file = \"ca.pem\" or ca_sn = \"<hex serial>\")",
                ));
            }
            (None, Some(sn)) => {
                sn.parse::<CaSn>()
                    .map_err(|e| invalid(key("ca_sn"), e.to_string()))?;
            }
            (Some(_), None) => {}
        }
        match (&s.url, &s.file) {
            (Some(_), Some(_)) => return Err(invalid(key("file"), "give url or file, not both")),
            (None, None) => {
                return Err(invalid(
                    key("url"),
                    "missing: where the CRL is (url = \"http://...\" or file = \"/path/crl.pem\")",
                ));
            }
            (Some(url), None) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| invalid(key("url"), format!("not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(
                        key("url"),
                        format!("scheme `{}`: only http and https", parsed.scheme()),
                    ));
                }
            }
            (None, Some(_)) => {}
        }
        if !(1..=MAX_REFRESH_SECS).contains(&s.refresh_secs) {
            return Err(invalid(
                key("refresh_secs"),
                format!(
                    "{} is out of range: 1 to {MAX_REFRESH_SECS} seconds",
                    s.refresh_secs
                ),
            ));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&s.timeout_secs) {
            return Err(invalid(
                key("timeout_secs"),
                format!(
                    "{} is out of range: 1 to {MAX_TIMEOUT_SECS} seconds",
                    s.timeout_secs
                ),
            ));
        }
    }
    Ok(())
}

/// Where a CRL is read from.
#[derive(Debug, Clone)]
enum Location {
    Url(reqwest::Url),
    File(PathBuf),
}

/// A source, its CA resolved.
#[derive(Debug, Clone)]
pub struct Source {
    index: usize,
    ca_sn: CaSn,
    location: Location,
    refresh: Duration,
    timeout: Duration,
    fail_closed: bool,
}

impl Source {
    /// The source as logs and `/readyz` name it: a URL without user info
    /// or query (they may hold credentials), or the file's path.
    fn label(&self) -> String {
        match &self.location {
            Location::Url(url) => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                shown.to_string()
            }
            Location::File(path) => path.display().to_string(),
        }
    }
}

/// Resolves validated sources: reads each `ca_file` for its serial.
pub fn resolve(sources: &[CrlSourceSettings]) -> Result<Vec<Source>, ConfigError> {
    sources
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let key = |k: &str| format!("tls.crl[{index}].{k}");
            let ca_sn = match (&s.ca_sn, &s.ca_file) {
                (Some(sn), _) => sn
                    .parse::<CaSn>()
                    .map_err(|e| invalid(key("ca_sn"), e.to_string()))?,
                (None, Some(path)) => ca_serial_of(path).map_err(|e| invalid(key("ca_file"), e))?,
                (None, None) => return Err(invalid(key("ca_file"), "missing")),
            };
            let location = match (&s.url, &s.file) {
                (Some(url), _) => Location::Url(
                    reqwest::Url::parse(url).map_err(|e| invalid(key("url"), e.to_string()))?,
                ),
                (None, Some(path)) => Location::File(path.clone()),
                (None, None) => return Err(invalid(key("url"), "missing")),
            };
            Ok(Source {
                index,
                ca_sn,
                location,
                refresh: Duration::from_secs(s.refresh_secs),
                timeout: Duration::from_secs(s.timeout_secs),
                fail_closed: s.fail_closed,
            })
        })
        .collect()
}

fn ca_serial_of(path: &std::path::Path) -> Result<CaSn, String> {
    let ders =
        crate::pki::pem_certificates(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = ders
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?;
    crate::registry::CaCert::parse(der, UnixTime::now())
        .map(|ca| ca.sn)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The sources with `fail_closed` whose last refresh failed, for
/// `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct CrlHealth {
    failing: Arc<Mutex<BTreeMap<usize, String>>>,
}

impl CrlHealth {
    /// The health of `sources` before their first refresh: a fail-closed
    /// source is not ready until its first CRL checked out.
    pub fn starting(sources: &[Source]) -> CrlHealth {
        let health = CrlHealth::default();
        for s in sources.iter().filter(|s| s.fail_closed) {
            health.set(
                s.index,
                Some(format!(
                    "the CRL of CA {} from {} has not been fetched yet (tls.crl[{}].fail_closed is set)",
                    s.ca_sn,
                    s.label(),
                    s.index
                )),
            );
        }
        health
    }

    /// Why the broker is not ready, if a fail-closed source is failing.
    pub fn failure(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.values().next().cloned()
    }

    fn set(&self, index: usize, failure: Option<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some(why) => failing.insert(index, why),
            None => failing.remove(&index),
        };
    }
}

/// The counters of CRL refreshes.
#[derive(Clone)]
pub struct CrlCounters {
    /// By CA serial and `changed` (`true`, `false`).
    pub refreshed: IntCounterVec,
    /// By CA serial.
    pub failures: IntCounterVec,
}

/// Refreshes every source on its schedule.
pub struct Refresher {
    pub sources: Vec<Source>,
    pub revoker: Revoker,
    pub health: CrlHealth,
    pub counters: CrlCounters,
    /// Records each refresh that imported a changed CRL (the audit trail).
    pub recorder: Recorder,
}

/// Where a refresh that imported a changed CRL is recorded, given by the
/// broker (the admin API's audit trail), so that this module needs nothing
/// of the admin API. Runs after the import, whatever its outcome.
pub type Recorder = Arc<
    dyn Fn(Refreshed) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What one refresh that imported a changed CRL did.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub ca_sn: CaSn,
    /// The source's label (credentials hidden).
    pub source: String,
    /// `tls.crl[i]`.
    pub index: usize,
    /// Serials the CRL lists.
    pub serials: usize,
    /// What the import did, or why it stopped (what it applied stays, and
    /// the error says what that was).
    pub outcome: Result<super::import::Imported, super::import::ImportError>,
    pub duration: std::time::Duration,
}

/// Why one refresh failed.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error(transparent)]
    Crl(#[from] super::CrlError),
    #[error("import failed: {0}")]
    Import(#[from] super::import::ImportError),
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl Refresher {
    /// Runs until `shutdown`. Fails (so that the broker does not start)
    /// only when no HTTP client can be made.
    pub async fn run(self, shutdown: CancellationToken) {
        let needs_https = self
            .sources
            .iter()
            .any(|s| matches!(&s.location, Location::Url(u) if u.scheme() == "https"));
        let roots = if needs_https {
            // Reading the system's trust store is file I/O: not on a worker.
            tokio::task::spawn_blocking(|| rustls_native_certs::load_native_certs().certs)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(roots);
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map(|b| b.with_root_certificates(store).with_no_client_auth());
        let http = match tls.map_err(|e| e.to_string()).and_then(|tls| {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .redirect(reqwest::redirect::Policy::limited(3))
                .build()
                .map_err(|e| e.to_string())
        }) {
            Ok(http) => http,
            Err(e) => {
                warn!(error = %e, "no HTTP client for CRL refresh; CRLs are not refreshed");
                return;
            }
        };
        let shared = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for source in shared.sources.clone() {
            let (shared, http, shutdown) = (shared.clone(), http.clone(), shutdown.clone());
            tasks.spawn(async move { shared.follow(source, http, shutdown).await });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                // Vital: the broker fails rather than silently stop
                // following a CRL.
                tracing::error!(error = %e, "a CRL refresh task panicked");
                return;
            }
        }
    }

    /// Refreshes one source every `refresh_secs` until `shutdown`.
    async fn follow(&self, source: Source, http: reqwest::Client, shutdown: CancellationToken) {
        let mut last: Option<aws_lc_rs::digest::Digest> = None;
        let mut ticks = tokio::time::interval(source.refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ca = source.ca_sn.to_string();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Not raced against the shutdown as a whole: an import that
            // has begun stops between two serials and is recorded.
            let outcome = self.refresh(&source, &http, &mut last, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            match outcome {
                Ok(changed) => {
                    self.counters
                        .refreshed
                        .with_label_values(&[ca.as_str(), if changed { "true" } else { "false" }])
                        .inc();
                    self.health.set(source.index, None);
                }
                Err(e) => {
                    self.counters
                        .failures
                        .with_label_values(&[ca.as_str()])
                        .inc();
                    warn!(ca_sn = %ca, source = %source.label(), error = %e, "CRL refresh failed; the last good CRL stays in force");
                    if source.fail_closed {
                        self.health.set(
                            source.index,
                            Some(format!(
                                "the CRL of CA {ca} from {} could not be refreshed ({e}) and tls.crl[{}].fail_closed is set",
                                source.label(),
                                source.index
                            )),
                        );
                    }
                }
            }
        }
    }

    /// One refresh: `Ok(true)` if a changed CRL was imported.
    async fn refresh(
        &self,
        source: &Source,
        http: &reqwest::Client,
        last: &mut Option<aws_lc_rs::digest::Digest>,
        shutdown: &CancellationToken,
    ) -> Result<bool, RefreshError> {
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => return Err(RefreshError::ShuttingDown),
            fetched = tokio::time::timeout(source.timeout, fetch(source, http)) => fetched,
        };
        let content = fetched.map_err(|_| {
            RefreshError::Fetch(format!(
                "no answer within tls.crl[{}].timeout_secs ({:?})",
                source.index, source.timeout
            ))
        })??;
        // Parsing and checking the signature of a CRL of up to 16 MB is
        // CPU work: not on an async worker.
        let registry = self.revoker.registry.clone();
        let ca_sn = source.ca_sn;
        let (crl, digest) = tokio::task::spawn_blocking(move || {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content);
            super::verify_signed_by(&content, &registry, UnixTime::now(), Some(&ca_sn))
                .map(|crl| (crl, digest))
        })
        .await
        .map_err(|e| RefreshError::Fetch(format!("the CRL check failed: {e}")))??;
        if last.as_ref().map(|d| d.as_ref()) == Some(digest.as_ref()) {
            return Ok(false);
        }
        let change = Change {
            by: "crl-refresh".into(),
            via: "crl-refresh",
            request_id: None,
        };
        let started = std::time::Instant::now();
        let done = self.revoker.import(&crl, &change, Some(shutdown)).await;
        (self.recorder)(Refreshed {
            ca_sn: source.ca_sn,
            source: source.label(),
            index: source.index,
            serials: crl.serials.len(),
            outcome: done.clone(),
            duration: started.elapsed(),
        })
        .await;
        let done = done?;
        info!(ca_sn = %done.ca_sn, source = %source.label(), serials = crl.serials.len(), inactivated = done.inactivated, blocked = done.blocked, already_inactive = done.already_inactive, "CRL refreshed");
        *last = Some(digest);
        Ok(true)
    }
}

/// The CRL's bytes, at most [`MAX_CRL_BYTES`].
async fn fetch(source: &Source, http: &reqwest::Client) -> Result<Vec<u8>, RefreshError> {
    let too_large = || {
        RefreshError::Fetch(format!(
            "the CRL is larger than {MAX_CRL_BYTES} bytes; not read"
        ))
    };
    match &source.location {
        Location::File(path) => {
            use tokio::io::AsyncReadExt;
            let fail = |e: std::io::Error| RefreshError::Fetch(format!("{}: {e}", path.display()));
            let file = tokio::fs::File::open(path).await.map_err(fail)?;
            let mut body = Vec::new();
            file.take(MAX_CRL_BYTES as u64 + 1)
                .read_to_end(&mut body)
                .await
                .map_err(fail)?;
            if body.len() > MAX_CRL_BYTES {
                return Err(too_large());
            }
            Ok(body)
        }
        Location::Url(url) => {
            let fail = |e: reqwest::Error| RefreshError::Fetch(e.without_url().to_string());
            let mut response = http.get(url.clone()).send().await.map_err(fail)?;
            if !response.status().is_success() {
                return Err(RefreshError::Fetch(format!(
                    "the server answered {}",
                    response.status()
                )));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(fail)? {
                if body.len() + chunk.len() > MAX_CRL_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> CrlSourceSettings {
        CrlSourceSettings {
            ca_file: None,
            ca_sn: Some("2B22".into()),
            url: Some("http://pki.example/fleet.crl".into()),
            file: None,
            refresh_secs: 300,
            timeout_secs: 10,
            fail_closed: false,
        }
    }

    #[test]
    fn sources_are_checked_naming_the_key() {
        assert!(validate(&[source()]).is_ok());
        type Edit = Box<dyn Fn(&mut CrlSourceSettings)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.ca_sn = None), "tls.crl[0].ca_file"),
            (
                Box::new(|s| s.ca_file = Some("ca.pem".into())),
                "tls.crl[0].ca_sn",
            ),
            (
                Box::new(|s| s.ca_sn = Some("xyz".into())),
                "tls.crl[0].ca_sn",
            ),
            (Box::new(|s| s.url = None), "tls.crl[0].url"),
            (
                Box::new(|s| s.file = Some("crl.pem".into())),
                "tls.crl[0].file",
            ),
            (
                Box::new(|s| s.url = Some("ftp://x/crl".into())),
                "tls.crl[0].url",
            ),
            (Box::new(|s| s.refresh_secs = 0), "tls.crl[0].refresh_secs"),
            (
                Box::new(|s| s.refresh_secs = MAX_REFRESH_SECS + 1),
                "tls.crl[0].refresh_secs",
            ),
            (Box::new(|s| s.timeout_secs = 0), "tls.crl[0].timeout_secs"),
        ];
        for (edit, key) in cases {
            let mut s = source();
            edit(&mut s);
            let e = validate(&[s.clone()]).unwrap_err().to_string();
            assert!(e.contains(key), "{s:?}: {e}");
        }
        let many = vec![source(); MAX_SOURCES + 1];
        assert!(validate(&many).unwrap_err().to_string().contains("tls.crl"));
    }

    #[test]
    fn an_unreadable_ca_file_is_named_at_start_and_by_check_config() {
        let mut s = source();
        s.ca_sn = None;
        s.ca_file = Some("/nonexistent/fleet-ca.pem".into());
        let e = resolve(&[s.clone()]).unwrap_err().to_string();
        assert!(
            e.contains("tls.crl[0].ca_file") && e.contains("/nonexistent/fleet-ca.pem"),
            "{e}"
        );
        let mut settings = crate::config::Settings::embedded_defaults().unwrap();
        settings.tls.crl = vec![s];
        let problems = crate::check::check(&settings);
        assert!(
            problems.iter().any(|p| p.contains("tls.crl[0].ca_file")),
            "{problems:?}"
        );
    }

    #[test]
    fn labels_hide_credentials() {
        let mut s = source();
        s.url = Some("https://user:pw@pki.example/crl?token=secret".into());
        let resolved = resolve(&[s]).unwrap();
        let label = resolved[0].label();
        assert_eq!(label, "https://pki.example/crl");
    }

    #[test]
    fn fail_closed_sources_make_the_broker_unready_until_they_recover() {
        let mut closed = source();
        closed.fail_closed = true;
        let sources = resolve(&[source(), closed]).unwrap();
        let starting = CrlHealth::starting(&sources);
        let why = starting.failure().unwrap();
        assert!(
            why.contains("tls.crl[1]") && why.contains("not been fetched"),
            "{why}"
        );
        starting.set(1, None);
        assert_eq!(starting.failure(), None);
        let health = CrlHealth::default();
        assert_eq!(health.failure(), None);
        health.set(1, Some("down".into()));
        assert_eq!(health.failure().as_deref(), Some("down"));
        health.set(1, None);
        assert_eq!(health.failure(), None);
    }
}
