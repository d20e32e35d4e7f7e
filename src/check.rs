//! `certmq check-config`: everything start-up would check, without
//! starting: the configuration's keys and values, the files it names, and
//! the data directory.

use std::path::Path;

use rustls_pki_types::UnixTime;

use crate::config::Settings;
use crate::registry::CaCert;

/// Problems found, each a sentence naming the key or file; empty when the
/// configuration would start.
pub fn check(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = settings.validate() {
        problems.push(e.to_string());
    }
    if settings.tls.server_cert.is_empty() {
        let dir = &settings.tls.dev_pki_dir;
        if dir.exists() && !dir.join("server.pem").is_file() {
            problems.push(format!(
                "tls.dev_pki_dir: {} exists but holds no development PKI (server.pem); delete it or set tls.server_cert",
                dir.display()
            ));
        }
    } else {
        let provider = crate::tls::provider();
        if let Err(e) = crate::tls::load_certified_key(
            &provider,
            Path::new(&settings.tls.server_cert),
            Path::new(&settings.tls.server_key),
        ) {
            problems.push(format!("tls.server_cert / tls.server_key: {e}"));
        }
    }
    for path in &settings.tls.ca_files {
        match crate::pki::pem_certificates(path) {
            Err(e) => problems.push(format!("tls.ca_files: {}: {e}", path.display())),
            Ok(certs) => {
                for der in certs {
                    if let Err(e) = CaCert::parse(der, UnixTime::now()) {
                        problems.push(format!("tls.ca_files: {}: {e}", path.display()));
                    }
                }
            }
        }
    }
    // The CA files of [[tls.crl]] sources are read at start: read them now.
    if let Err(e) = crate::crl::refresh::resolve(&settings.tls.crl) {
        problems.push(e.to_string());
    }
    problems.extend(crate::admin::tls::check(&settings.admin));
    problems.extend(check_data_dir(&settings.storage.data_dir));
    problems
}

/// With `storage.backend = "postgres"`: whether the database answers, and
/// with a schema this certmq understands. `None` when it does (or for
/// SQLite, which [`check`] covers through the data directory).
pub async fn check_store(settings: &Settings) -> Option<String> {
    use crate::config::StorageBackend;
    if settings.storage.backend != StorageBackend::Postgres {
        return None;
    }
    // A URL that does not parse is reported by `check` already.
    let config = crate::store::postgres::config(&settings.storage.postgres_url).ok()?;
    let at = crate::store::postgres::describe(&config);
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            return Some(format!(
                "storage.postgres_url: cannot connect to {at}: {e} (is the server running, and the \
                 user, password and database right?)"
            ));
        }
    };
    tokio::spawn(connection);
    let found = client
        .query_opt("SELECT version FROM certmq_schema WHERE id = 1", &[])
        .await;
    match found {
        Ok(Some(row)) => {
            let version: i64 = row.get(0);
            (version > crate::store::postgres::SCHEMA_VERSION).then(|| {
                format!(
                    "storage.postgres_url: {at} has registry schema version {version}, newer than this \
                     certmq understands ({}); upgrade certmq",
                    crate::store::postgres::SCHEMA_VERSION
                )
            })
        }
        // No schema yet: the first start creates it.
        Ok(None) => None,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => Some(format!("storage.postgres_url: {at} answered an error: {e}")),
    }
}

fn check_data_dir(dir: &Path) -> Option<String> {
    // The nearest existing ancestor must let us create or write the
    // directory.
    let existing = dir.ancestors().find(|p| p.exists())?;
    if !existing.is_dir() {
        return Some(format!(
            "storage.data_dir: {} is not a directory",
            existing.display()
        ));
    }
    let probe = existing.join(format!(".certmq-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!(
            "storage.data_dir: cannot write in {}: {e}",
            existing.display()
        )),
    }
}

/// Things that work but are likely not what the operator meant; printed by
/// `certmq check-config` without failing it.
pub fn warnings(settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Ok(set) = crate::authz::PolicySet::from_settings(&settings.authz) {
        if set.uses_client_id()
            && settings.mqtt.client_id_policy == crate::config::ClientIdPolicy::Any
        {
            warnings.push(
                "authz: a policy uses ${ClientId} while mqtt.client_id_policy = \"any\": the client chooses its id, \
                 and with it what that rule grants; set mqtt.client_id_policy to \"equals_cn\" or \"starts_with_cn\""
                    .to_owned(),
            );
        }
    }
    warnings
}
