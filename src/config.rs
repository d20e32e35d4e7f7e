//! Typed settings, loaded with the `config` crate.
//!
//! Three layers, later ones winning: the embedded `config/default.toml`, an
//! optional file (`certmq serve --config PATH`), and environment variables
//! `CERTMQ__<SECTION>__<KEY>`. Every section denies unknown keys, and
//! [`Settings::validate`] checks values, so a bad configuration stops
//! start-up with a message naming the key and the problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The embedded defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub instance: InstanceSettings,
    pub mqtt: MqttSettings,
    pub tls: TlsSettings,
    pub admin: AdminSettings,
    pub storage: StorageSettings,
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    pub authz: crate::authz::AuthzSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    pub id: String,
    pub edition: String,
    pub owner: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    pub listen: String,
    pub first_byte_timeout_ms: u64,
    pub connections_per_second_per_ip: u32,
    /// Connections start with a PROXY protocol header (v1 or v2) from a
    /// load balancer; one without is refused.
    pub proxy_protocol: bool,
    pub client_id_policy: ClientIdPolicy,
    pub handshake_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub drop_timeout_ms: u64,
    pub max_queued_messages: usize,
    pub max_inflight_messages: u16,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_session_expiry_secs: u64,
    pub max_keep_alive_secs: u16,
    pub max_publish_wait_ms: u64,
    pub max_retained_messages: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub server_cert: String,
    pub server_key: String,
    pub ca_files: Vec<PathBuf>,
    pub dev_pki_dir: PathBuf,
    pub session_cache_size: usize,
    /// CRLs refreshed on a schedule (`[[tls.crl]]`, see `crl::refresh`).
    #[serde(default)]
    pub crl: Vec<crate::crl::refresh::CrlSourceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: String,
    pub timestamp_window_secs: u64,
    pub access_keys: Vec<crate::admin::auth::AccessKey>,
    /// Calls per second per account, by action name (and `default`).
    pub rate_limits: HashMap<String, u32>,
    /// The audit file (`audit.jsonl`) is rotated past this size.
    pub audit_file_max_mb: u64,
    /// Rotated audit files kept (`audit.jsonl.1` ...).
    pub audit_files_kept: usize,
    /// HTTPS: the certificate chain and key (PEM); both empty for plain HTTP.
    pub tls_cert: String,
    pub tls_key: String,
    /// mTLS: clients must present a certificate chained to this CA (PEM).
    pub tls_client_ca: String,
    /// Plain HTTP on an address that is not loopback.
    pub allow_plaintext: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub max_size_mb: u64,
    /// Where the certificate registry lives.
    pub backend: StorageBackend,
    /// The PostgreSQL database (backend "postgres").
    pub postgres_url: String,
}

/// Debug without the PostgreSQL URL, which may hold a password.
impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("data_dir", &self.data_dir)
            .field("max_size_mb", &self.max_size_mb)
            .field("backend", &self.backend)
            .field(
                "postgres_url",
                &if self.postgres_url.is_empty() {
                    ""
                } else {
                    "(set, not shown)"
                },
            )
            .finish()
    }
}

/// The registry's store: SQLite in the data directory (one broker), or a
/// PostgreSQL database (several brokers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Sqlite,
    Postgres,
}

/// The brokers sharing a PostgreSQL registry (see `cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's name; empty: the host name (see [`Settings::node_id`]).
    pub node_id: String,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub refusals_per_second: u32,
}

/// What a client id must look like, given the certificate's CN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdPolicy {
    /// Any client id (unique per certificate identity).
    Any,
    /// The client id is the certificate's subject CN.
    EqualsCn,
    /// The client id starts with the certificate's subject CN.
    StartsWithCn,
}

impl ClientIdPolicy {
    pub fn allows(self, client_id: &str, common_name: &str) -> bool {
        match self {
            ClientIdPolicy::Any => true,
            ClientIdPolicy::EqualsCn => !common_name.is_empty() && client_id == common_name,
            ClientIdPolicy::StartsWithCn => {
                !common_name.is_empty() && client_id.starts_with(common_name)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the embedded defaults, then `file` if given, then the
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, Some(std::env::vars().collect()))
    }

    /// The embedded defaults alone (no file, no environment).
    pub fn embedded_defaults() -> Result<Settings, ConfigError> {
        Self::load_with_env(None, None)
    }

    fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(config::ConfigError::Message(format!(
                    "the configuration file {} does not exist or is not a file",
                    path.display()
                ))));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        if let Some(vars) = env {
            builder = builder.add_source(
                Environment::with_prefix("CERTMQ")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("tls.ca_files")
                    .source(Some(vars)),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.instance.id.trim().is_empty() {
            return Err(invalid("instance.id", "must not be empty"));
        }
        if self.instance.owner.trim().is_empty() {
            return Err(invalid(
                "instance.owner",
                "must not be empty (the account that owns the instance)",
            ));
        }
        if self.instance.edition.trim().is_empty() {
            return Err(invalid(
                "instance.edition",
                "must not be empty (e.g. \"platinum\")",
            ));
        }
        self.mqtt_listen()?;
        crate::crl::refresh::validate(&self.tls.crl)?;
        crate::admin::tls::validate(&self.admin, self.admin_listen()?)?;
        let m = &self.mqtt;
        within(
            "mqtt.first_byte_timeout_ms",
            m.first_byte_timeout_ms,
            1,
            MAX_STAGE_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.handshake_timeout_ms",
            m.handshake_timeout_ms,
            1,
            MAX_STAGE_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.connect_timeout_ms",
            m.connect_timeout_ms,
            1,
            MAX_STAGE_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.send_timeout_ms",
            m.send_timeout_ms,
            1,
            MAX_STAGE_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.drop_timeout_ms",
            m.drop_timeout_ms,
            1,
            MAX_DROP_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.max_queued_messages",
            m.max_queued_messages as u64,
            1,
            1_000_000,
            "messages",
        )?;
        within(
            "mqtt.max_inflight_messages",
            u64::from(m.max_inflight_messages),
            1,
            65_535,
            "messages",
        )?;
        within(
            "mqtt.receive_maximum",
            u64::from(m.receive_maximum),
            1,
            65_535,
            "messages",
        )?;
        within(
            "mqtt.topic_alias_maximum",
            u64::from(m.topic_alias_maximum),
            0,
            65_535,
            "aliases",
        )?;
        within(
            "mqtt.max_session_expiry_secs",
            m.max_session_expiry_secs,
            0,
            u64::from(u32::MAX),
            "s",
        )?;
        within(
            "mqtt.max_retained_messages",
            m.max_retained_messages as u64,
            1,
            10_000_000,
            "topics",
        )?;
        within(
            "mqtt.max_publish_wait_ms",
            m.max_publish_wait_ms,
            0,
            MAX_STAGE_TIMEOUT_MS,
            "ms",
        )?;
        within(
            "mqtt.max_keep_alive_secs",
            u64::from(m.max_keep_alive_secs),
            1,
            65_535,
            "s",
        )?;
        within(
            "mqtt.max_connections",
            m.max_connections as u64,
            1,
            MAX_CONNECTIONS,
            "connections",
        )?;
        within(
            "mqtt.connections_per_second_per_ip",
            u64::from(m.connections_per_second_per_ip),
            0,
            MAX_RATE,
            "per second",
        )?;
        if !(64..=268_435_455).contains(&self.mqtt.max_packet_size) {
            return Err(invalid(
                "mqtt.max_packet_size",
                "must be between 64 and 268435455 bytes (the MQTT maximum)",
            ));
        }
        within(
            "tls.session_cache_size",
            self.tls.session_cache_size as u64,
            0,
            MAX_SESSION_CACHE,
            "sessions",
        )?;
        within(
            "admin.timestamp_window_secs",
            self.admin.timestamp_window_secs,
            1,
            MAX_TIMESTAMP_WINDOW_SECS,
            "s",
        )?;
        within(
            "admin.audit_file_max_mb",
            self.admin.audit_file_max_mb,
            1,
            MAX_AUDIT_FILE_MB,
            "MiB",
        )?;
        within(
            "admin.audit_files_kept",
            self.admin.audit_files_kept as u64,
            0,
            MAX_AUDIT_FILES,
            "files",
        )?;
        within(
            "storage.max_size_mb",
            self.storage.max_size_mb,
            0,
            MAX_STORE_MB,
            "MiB",
        )?;
        match self.storage.backend {
            StorageBackend::Sqlite => {}
            StorageBackend::Postgres => {
                if self.storage.postgres_url.trim().is_empty() {
                    return Err(invalid(
                        "storage.postgres_url",
                        "must name the database when storage.backend is \"postgres\" \
                         (postgres://user:password@host:5432/database)",
                    ));
                }
                if let Err(e) = crate::store::postgres::config(&self.storage.postgres_url) {
                    let reason = match e {
                        crate::store::StoreError::Open { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    return Err(invalid("storage.postgres_url", reason));
                }
                if self.storage.max_size_mb != 0 {
                    return Err(invalid(
                        "storage.max_size_mb",
                        "applies to the SQLite store only; with storage.backend = \"postgres\" \
                         set it to 0 and limit the database in PostgreSQL",
                    ));
                }
            }
        }
        within("cluster.lease_ms", self.cluster.lease_ms, 500, 60_000, "ms")?;
        if !self.cluster.node_id.is_empty() {
            check_node_id(&self.cluster.node_id).map_err(|e| invalid("cluster.node_id", e))?;
        }
        within(
            "log.refusals_per_second",
            u64::from(self.log.refusals_per_second),
            1,
            MAX_RATE,
            "per second",
        )?;
        match (
            self.tls.server_cert.is_empty(),
            self.tls.server_key.is_empty(),
        ) {
            (true, false) => {
                return Err(invalid(
                    "tls.server_cert",
                    "is empty while tls.server_key is set; set both, or neither for the development PKI",
                ));
            }
            (false, true) => {
                return Err(invalid(
                    "tls.server_key",
                    "is empty while tls.server_cert is set; set both, or neither for the development PKI",
                ));
            }
            _ => {}
        }
        if self.tls.server_cert.is_empty() && self.tls.dev_pki_dir.as_os_str().is_empty() {
            return Err(invalid(
                "tls.dev_pki_dir",
                "must not be empty when tls.server_cert is empty",
            ));
        }
        for (i, key) in self.admin.access_keys.iter().enumerate() {
            let at = |field: &str| format!("admin.access_keys[{i}].{field}");
            if key.id.trim().is_empty() {
                return Err(invalid(at("id"), "must not be empty"));
            }
            if key.secret.len() < 16 {
                return Err(invalid(at("secret"), "must be at least 16 characters"));
            }
            if key.account.trim().is_empty() {
                return Err(invalid(at("account"), "must not be empty"));
            }
            if self.admin.access_keys[..i].iter().any(|k| k.id == key.id) {
                return Err(invalid(
                    at("id"),
                    format!("`{}` is configured twice", key.id),
                ));
            }
        }
        for (action, rate) in &self.admin.rate_limits {
            within(
                &format!("admin.rate_limits.{action}"),
                u64::from(*rate),
                1,
                MAX_RATE,
                "calls per second",
            )?;
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (e.g. \"info\")"));
        }
        crate::authz::PolicySet::from_settings(&self.authz)
            .map_err(|e| invalid(e.place, e.problem))?;
        Ok(())
    }

    pub fn mqtt_listen(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("mqtt.listen", &self.mqtt.listen)
    }

    pub fn admin_listen(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("admin.listen", &self.admin.listen)
    }

    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.first_byte_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.handshake_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.connect_timeout_ms)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.send_timeout_ms)
    }

    /// This node's name: `cluster.node_id`, or the host name (cut to a
    /// valid node id), or "certmq" when the host has none.
    pub fn node_id(&self) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let id: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if id.is_empty() { "certmq".into() } else { id }
    }

    /// How long this node's lease lasts (`cluster.lease_ms`).
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.cluster.lease_ms)
    }

    pub fn drop_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt.drop_timeout_ms)
    }

    /// `mqtt.max_session_expiry_secs`.
    pub fn max_session_expiry(&self) -> Duration {
        Duration::from_secs(self.mqtt.max_session_expiry_secs)
    }

    pub fn timestamp_window(&self) -> Duration {
        Duration::from_secs(self.admin.timestamp_window_secs)
    }
}

/// Upper bounds of the duration and size keys: far beyond any sensible
/// setting, and small enough that no deadline or size computed from them
/// overflows.
const MAX_STAGE_TIMEOUT_MS: u64 = 3_600_000;
const MAX_DROP_TIMEOUT_MS: u64 = 600_000;
const MAX_CONNECTIONS: u64 = 10_000_000;
const MAX_RATE: u64 = 1_000_000;
const MAX_SESSION_CACHE: u64 = 10_000_000;
const MAX_TIMESTAMP_WINDOW_SECS: u64 = 86_400;
const MAX_AUDIT_FILE_MB: u64 = 4_096;
const MAX_AUDIT_FILES: u64 = 1_000;
/// 16 TiB, SQLite's own limit with its default page size.
const MAX_STORE_MB: u64 = 16 * 1024 * 1024;

/// `value` must lie in `min..=max` (in `unit`).
/// A node id: 1 to 64 letters, digits, `.`, `_` or `-`.
pub(crate) fn check_node_id(id: &str) -> Result<(), String> {
    let shown: String = id.chars().take(64).collect();
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "`{shown}` must be 1 to 64 characters (letters, digits, `.`, `_`, `-`)"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{shown}` holds `{}`; use letters, digits, `.`, `_` and `-` only",
            c.escape_default()
        ));
    }
    Ok(())
}

fn within(key: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("is {value}; it must be from {min} to {max} ({unit})"),
        ))
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an IP address and port such as 0.0.0.0:8883"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::embedded_defaults().unwrap();
        assert_eq!(s.instance.id, "mqtt-certmq-local");
        assert_eq!(s.instance.edition, "platinum");
        assert_eq!(s.mqtt.listen, "0.0.0.0:8883");
        assert_eq!(s.admin.listen, "127.0.0.1:8080");
        assert_eq!(s.storage.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn environment_overrides() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CERTMQ__MQTT__LISTEN", "127.0.0.1:18883"),
                ("CERTMQ__MQTT__MAX_CONNECTIONS", "7"),
                ("CERTMQ__TLS__CA_FILES", "a.pem,b.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mqtt.listen, "127.0.0.1:18883");
        assert_eq!(s.mqtt.max_connections, 7);
        assert_eq!(
            s.tls.ca_files,
            vec![PathBuf::from("a.pem"), PathBuf::from("b.pem")]
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Settings::load_with_env(None, env(&[("CERTMQ__MQTT__LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.listen"), "{err}");

        let err = Settings::load_with_env(None, env(&[("CERTMQ__MQTT__MAX_CONNECTIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");

        let err = Settings::load_with_env(None, env(&[("CERTMQ__MQTT__LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn access_keys_and_rate_limits_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[admin.access_keys]]\nid = \"LTAI1\"\nsecret = \"0123456789abcdef\"\naccount = \"a\"\nactions = [\"mq:Get*\"]\n\
             [admin.rate_limits]\nListCaCertificate = 3\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), None).unwrap();
        assert_eq!(s.admin.access_keys.len(), 1);
        assert_eq!(s.admin.access_keys[0].actions, ["mq:Get*"]);
        // Action names keep their case; the defaults stay.
        assert_eq!(s.admin.rate_limits.get("ListCaCertificate"), Some(&3));
        assert_eq!(
            s.admin.rate_limits.get("InactivateDeviceCertificate"),
            Some(&500)
        );

        std::fs::write(&path, "[[admin.access_keys]]\nid = \"x\"\nsecret = \"short\"\naccount = \"a\"\nactions = []\n").unwrap();
        let err = Settings::load_with_env(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.access_keys[0].secret"), "{err}");
    }

    #[test]
    fn durations_and_sizes_have_upper_bounds() {
        // Each of these would overflow a deadline or a size computation if
        // it got through (e.g. Instant::now() + u64::MAX ms).
        let huge = u64::MAX.to_string();
        for (var, key, limit) in [
            (
                "CERTMQ__MQTT__FIRST_BYTE_TIMEOUT_MS",
                "mqtt.first_byte_timeout_ms",
                "3600000",
            ),
            (
                "CERTMQ__MQTT__HANDSHAKE_TIMEOUT_MS",
                "mqtt.handshake_timeout_ms",
                "3600000",
            ),
            (
                "CERTMQ__MQTT__CONNECT_TIMEOUT_MS",
                "mqtt.connect_timeout_ms",
                "3600000",
            ),
            (
                "CERTMQ__MQTT__SEND_TIMEOUT_MS",
                "mqtt.send_timeout_ms",
                "3600000",
            ),
            (
                "CERTMQ__MQTT__DROP_TIMEOUT_MS",
                "mqtt.drop_timeout_ms",
                "600000",
            ),
            (
                "CERTMQ__MQTT__MAX_CONNECTIONS",
                "mqtt.max_connections",
                "10000000",
            ),
            (
                "CERTMQ__ADMIN__TIMESTAMP_WINDOW_SECS",
                "admin.timestamp_window_secs",
                "86400",
            ),
            (
                "CERTMQ__ADMIN__AUDIT_FILE_MAX_MB",
                "admin.audit_file_max_mb",
                "4096",
            ),
            (
                "CERTMQ__ADMIN__AUDIT_FILES_KEPT",
                "admin.audit_files_kept",
                "1000",
            ),
            (
                "CERTMQ__STORAGE__MAX_SIZE_MB",
                "storage.max_size_mb",
                "16777216",
            ),
            (
                "CERTMQ__TLS__SESSION_CACHE_SIZE",
                "tls.session_cache_size",
                "10000000",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(var, &huge)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(limit), "{var}: {err}");
        }
        for (var, key) in [
            (
                "CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP",
                "mqtt.connections_per_second_per_ip",
            ),
            (
                "CERTMQ__LOG__REFUSALS_PER_SECOND",
                "log.refusals_per_second",
            ),
            (
                "CERTMQ__ADMIN__RATE_LIMITS__DEFAULT",
                "admin.rate_limits.default",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(var, "4000000000")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("1000000"), "{var}: {err}");
        }
        // The largest allowed values load, and their durations add to now.
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CERTMQ__MQTT__CONNECT_TIMEOUT_MS", "3600000"),
                ("CERTMQ__MQTT__HANDSHAKE_TIMEOUT_MS", "3600000"),
                ("CERTMQ__ADMIN__TIMESTAMP_WINDOW_SECS", "86400"),
            ]),
        )
        .unwrap();
        let _ = std::time::Instant::now() + s.connect_timeout();
        let _ = std::time::SystemTime::now() + s.timestamp_window();
    }

    #[test]
    fn file_layer_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nhandshake_timeout_ms = 1234\n").unwrap();
        let s = Settings::load_with_env(Some(&path), None).unwrap();
        assert_eq!(s.mqtt.handshake_timeout_ms, 1234);
        assert_eq!(s.mqtt.listen, "0.0.0.0:8883");

        let err = Settings::load_with_env(Some(&dir.path().join("nope.toml")), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml"), "{err}");

        std::fs::write(&path, "[tls]\nserver_cert = \"a.pem\"\n").unwrap();
        let err = Settings::load_with_env(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.server_key"), "{err}");
    }
}
