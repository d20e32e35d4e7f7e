//! The audit trail: one record per state-changing admin call, whatever its
//! outcome (refused signatures included), and one per change certmq makes
//! on its own account ([`ChangeRecord`]: a CRL refresh that imported a new
//! CRL), so that every inactivation in the registry has its record.
//!
//! Records go to an append-only JSON-lines file, `audit.jsonl` in
//! `storage.data_dir`, written by a thread of its own (file I/O never runs
//! on an async worker). A call is answered only once its record is in the
//! file, so the trail cannot lag behind what operators were told; the
//! log level has no say in it. The same record also goes to the
//! `certmq::audit` log target, for log collectors.
//!
//! Rotation by size: once `audit.jsonl` would pass `admin.audit_file_max_mb`
//! it becomes `audit.jsonl.1` (older ones shift to `.2`, ...), and the
//! oldest beyond `admin.audit_files_kept` is deleted.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::rpc::RpcRequest;

/// The audit file's name in the data directory.
pub const FILE_NAME: &str = "audit.jsonl";

/// Most records a second of calls refused before their signature checked
/// out (unknown key, bad signature): whoever can reach the admin port can
/// send those, and must not be able to rotate the genuine trail away.
/// Beyond it they are counted (`certmq_audit_records_suppressed_total`).
pub const UNAUTHENTICATED_PER_SECOND: u32 = 20;

/// Longest error message kept in a record (a refused signature's message
/// holds the whole string to sign, of the caller's making).
const MAX_MESSAGE_CHARS: usize = 256;

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Recorded,
    /// An unauthenticated refusal beyond [`UNAUTHENTICATED_PER_SECOND`].
    Suppressed,
}

/// The parameters that name what a call acted on.
const TARGETS: [&str; 12] = [
    "Sn",
    "CaSn",
    "DeviceSn",
    "ClientId",
    "CaName",
    "MqttInstanceId",
    "InstanceId",
    "IdentityType",
    "Identity",
    "Topic",
    "PermitAction",
    "Effect",
];

/// Why the audit file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit file {path}: {source} (check storage.data_dir and its permissions)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit writer thread has stopped")]
    WriterGone,
}

pub struct AuditRecord<'a> {
    pub req: &'a RpcRequest,
    /// Where the call came from (the TCP peer of the admin listener).
    pub peer: std::net::SocketAddr,
    /// The node that took the call (`cluster.node_id`).
    pub node: &'a str,
    pub action: &'a str,
    pub access_key_id: Option<&'a str>,
    pub account: Option<&'a str>,
    /// `Success`, or the error code answered.
    pub code: &'a str,
    /// The error message answered, if any.
    pub message: Option<String>,
    pub duration: Duration,
}

impl AuditRecord<'_> {
    fn to_json(&self) -> Value {
        let targets: Map<String, Value> = TARGETS
            .iter()
            .filter_map(|name| {
                let value = self.req.param(name)?;
                Some((
                    (*name).to_owned(),
                    Value::String(value.chars().take(128).collect()),
                ))
            })
            .collect();
        json!({
            "time": now_rfc3339(),
            "request_id": self.req.request_id,
            "peer": self.peer.to_string(),
            "node": self.node,
            "access_key_id": self.access_key_id.map(|id| id.chars().take(64).collect::<String>()),
            "account": self.account,
            "action": self.action.chars().take(64).collect::<String>(),
            "targets": targets,
            "code": self.code,
            "message": self.message.as_ref().map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect::<String>()),
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
        })
    }
}

/// A change certmq made without an admin call.
pub struct ChangeRecord<'a> {
    /// The node that made it (`cluster.node_id`).
    pub node: &'a str,
    /// What made it, as the registry records it (`crl-refresh`).
    pub by: &'a str,
    pub action: &'a str,
    /// What it acted on, as an admin call's record names its targets.
    pub targets: Map<String, Value>,
    /// `Success`, or what went wrong.
    pub code: &'a str,
    pub message: Option<String>,
    /// What it did (counts), as it reported.
    pub outcome: Map<String, Value>,
    pub duration: Duration,
}

impl ChangeRecord<'_> {
    fn to_json(&self) -> Value {
        json!({
            "time": now_rfc3339(),
            "node": self.node,
            "by": self.by,
            "action": self.action,
            "targets": self.targets,
            "code": self.code,
            "message": self.message.as_ref().map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect::<String>()),
            "outcome": self.outcome,
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
        })
    }
}

/// The recorder of CRL refreshes ([`crate::crl::refresh::Recorder`]): one
/// `CrlRefresh` record per refresh that imported a changed CRL, by
/// `crl-refresh`, naming the CA and the source (`tls.crl[i]` and its
/// location, credentials hidden), with what the import did; and one per
/// import that stopped part of the way having changed something (why it
/// stopped, and what it had done). An import that failed before changing
/// anything leaves no record: it is retried at every refresh, and a store
/// that is down would otherwise fill the trail with the same line. A
/// record that cannot be written is counted
/// (`certmq_audit_write_failures_total`) and logged: the import is done.
pub fn crl_refresh_recorder(
    audit: Arc<AuditLog>,
    node: Arc<str>,
    failures: prometheus::IntCounter,
) -> crate::crl::refresh::Recorder {
    Arc::new(move |done: crate::crl::refresh::Refreshed| {
        let (audit, node, failures) = (audit.clone(), node.clone(), failures.clone());
        Box::pin(async move {
            let mut targets = Map::new();
            targets.insert("CaSn".into(), done.ca_sn.to_string().into());
            targets.insert(
                "Source".into(),
                format!("tls.crl[{}] {}", done.index, done.source).into(),
            );
            let applied = match &done.outcome {
                Ok(imported) => *imported,
                Err(stopped) => stopped.applied,
            };
            if done.outcome.is_err() && applied.inactivated + applied.blocked == 0 {
                return;
            }
            let mut outcome = Map::new();
            outcome.insert("serials".into(), done.serials.into());
            outcome.insert("inactivated".into(), applied.inactivated.into());
            outcome.insert("blocked".into(), applied.blocked.into());
            outcome.insert("already_inactive".into(), applied.already_inactive.into());
            let written = audit
                .write_change(ChangeRecord {
                    node: &node,
                    by: "crl-refresh",
                    action: "CrlRefresh",
                    targets,
                    code: if done.outcome.is_ok() {
                        "Success"
                    } else {
                        "ImportFailed"
                    },
                    message: done.outcome.as_ref().err().map(ToString::to_string),
                    outcome,
                    duration: done.duration,
                })
                .await;
            if let Err(e) = written {
                failures.inc();
                tracing::error!(ca_sn = %done.ca_sn, error = %e, "audit record of a CRL refresh not written");
            }
        })
    })
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

type Job = (String, oneshot::Sender<Result<(), String>>);

/// The audit file and its writer thread.
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    unauthenticated: crate::log_limit::LogLimiter,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) `audit.jsonl` in `dir`, rotated past
    /// `max_bytes` with `kept` older files.
    pub fn open(dir: &Path, max_bytes: u64, kept: usize) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE_NAME);
        let mut file = Rotating {
            file: open_append(&path)?,
            size: 0,
            path: path.clone(),
            max_bytes: max_bytes.max(1),
            kept,
        };
        file.size = file
            .file
            .metadata()
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("certmq-audit".into())
            .spawn(move || {
                for (line, done) in queue {
                    let _ = done.send(file.append(&line).map_err(|e| e.to_string()));
                }
            })
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(AuditLog {
            jobs,
            path,
            unauthenticated: crate::log_limit::LogLimiter::new(UNAUTHENTICATED_PER_SECOND),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record and waits until it is in the file. A record of a
    /// call without a verified caller may be suppressed (see
    /// [`UNAUTHENTICATED_PER_SECOND`]); the next one written says how many
    /// were (`suppressed_before`).
    pub async fn write(&self, record: AuditRecord<'_>) -> Result<Written, AuditError> {
        let mut json = record.to_json();
        if record.account.is_none() {
            match self.unauthenticated.admit() {
                Some(suppressed) if suppressed > 0 => {
                    json["suppressed_before"] = suppressed.into();
                }
                Some(_) => {}
                None => return Ok(Written::Suppressed),
            }
        }
        tracing::info!(
            target: "certmq::audit",
            request_id = %record.req.request_id,
            peer = %record.peer,
            access_key_id = record.access_key_id.unwrap_or("-"),
            account = record.account.unwrap_or("-"),
            action = record.action,
            targets = %json["targets"],
            code = record.code,
            duration_ms = record.duration.as_secs_f64() * 1000.0,
            "admin call"
        );
        self.append(json).await
    }

    /// Writes the record of a change certmq made on its own and waits
    /// until it is in the file.
    pub async fn write_change(&self, record: ChangeRecord<'_>) -> Result<Written, AuditError> {
        let json = record.to_json();
        tracing::info!(
            target: "certmq::audit",
            by = record.by,
            action = record.action,
            targets = %json["targets"],
            outcome = %json["outcome"],
            code = record.code,
            "change"
        );
        self.append(json).await
    }

    async fn append(&self, json: Value) -> Result<Written, AuditError> {
        let (done, written) = oneshot::channel();
        self.jobs
            .send((json.to_string(), done))
            .map_err(|_| AuditError::WriterGone)?;
        match written.await {
            Ok(Ok(())) => Ok(Written::Recorded),
            Ok(Err(reason)) => Err(AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(reason),
            }),
            Err(_) => Err(AuditError::WriterGone),
        }
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The current audit file, owned by the writer thread.
struct Rotating {
    file: File,
    size: u64,
    path: PathBuf,
    max_bytes: u64,
    kept: usize,
}

impl Rotating {
    fn append(&mut self, line: &str) -> Result<(), AuditError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            if let Err(e) = self.rotate() {
                // The record matters more than the size limit: it goes to
                // the current file, and the next record tries again.
                tracing::error!(error = %e, "audit file not rotated");
            }
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // One write of a whole line to a file opened for appending.
        self.file
            .write_all(&bytes)
            .map_err(|source| self.io(source))?;
        self.size += len;
        Ok(())
    }

    /// `audit.jsonl` -> `.1` -> `.2` ... ; the one past `kept` is removed.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.kept == 0 {
            fs::remove_file(&self.path).map_err(|source| self.io(source))?;
        } else {
            let _ = fs::remove_file(numbered(self.kept));
            for n in (1..self.kept).rev() {
                let from = numbered(n);
                if from.exists() {
                    fs::rename(&from, numbered(n + 1)).map_err(|source| self.io(source))?;
                }
            }
            fs::rename(&self.path, numbered(1)).map_err(|source| self.io(source))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn request(device_sn: &str) -> RpcRequest {
        let query = format!("Action=InactivateDeviceCertificate&DeviceSn={device_sn}");
        RpcRequest::parse("POST", "/", Some(&query), HeaderMap::new(), Vec::new(), "h").unwrap()
    }

    async fn write(log: &AuditLog, req: &RpcRequest) {
        log.write(AuditRecord {
            req,
            peer: ([127, 0, 0, 1], 4242).into(),
            node: "node-a",
            action: "InactivateDeviceCertificate",
            access_key_id: Some("LTAI1"),
            account: Some("acct"),
            code: "Success",
            message: None,
            duration: Duration::from_millis(3),
        })
        .await
        .unwrap();
    }

    fn lines(path: &Path) -> Vec<Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_are_json_lines_in_the_file_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20, 2).unwrap();
        let req = request("AB01");
        write(&log, &req).await;
        let records = lines(&dir.path().join(FILE_NAME));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["request_id"], req.request_id.as_str());
        assert_eq!(records[0]["targets"]["DeviceSn"], "AB01");
        assert_eq!(records[0]["code"], "Success");
        assert_eq!(records[0]["peer"], "127.0.0.1:4242");
        let mode = fs::metadata(dir.path().join(FILE_NAME)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Reopening appends.
        drop(log);
        let log = AuditLog::open(dir.path(), 1 << 20, 2).unwrap();
        write(&log, &request("AB02")).await;
        assert_eq!(lines(&dir.path().join(FILE_NAME)).len(), 2);
    }

    #[tokio::test]
    async fn rotation_by_size_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        // About three records per file.
        let log = AuditLog::open(dir.path(), 900, 2).unwrap();
        for i in 0..20 {
            write(&log, &request(&format!("{i:04X}"))).await;
        }
        let current = lines(&dir.path().join(FILE_NAME));
        let one = lines(&dir.path().join(format!("{FILE_NAME}.1")));
        let two = lines(&dir.path().join(format!("{FILE_NAME}.2")));
        assert!(!dir.path().join(format!("{FILE_NAME}.3")).exists());
        assert!(!current.is_empty() && !one.is_empty() && !two.is_empty());
        for file in [FILE_NAME.to_owned(), format!("{FILE_NAME}.1")] {
            assert!(fs::metadata(dir.path().join(file)).unwrap().len() <= 900);
        }
        // The newest record is last in the current file; order is kept
        // across the files.
        let all: Vec<&Value> = two.iter().chain(&one).chain(&current).collect();
        let sns: Vec<&str> = all
            .iter()
            .map(|r| r["targets"]["DeviceSn"].as_str().unwrap())
            .collect();
        let mut sorted = sns.clone();
        sorted.sort();
        assert_eq!(sns, sorted);
        assert_eq!(*sns.last().unwrap(), "0013");
    }

    /// A CRL refresh's import has its record when it changed something, or
    /// ran to its end; one that stopped before changing anything (a store
    /// that is down, retried at every refresh) has none.
    #[tokio::test]
    async fn crl_refresh_imports_are_recorded_when_they_change_something() {
        use crate::crl::import::{ImportError, Imported};
        use crate::crl::refresh::Refreshed;
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), 1 << 20, 2).unwrap());
        let failures = prometheus::IntCounter::new("f", "f").unwrap();
        let record = crl_refresh_recorder(log, Arc::from("node-a"), failures.clone());
        let ca_sn = crate::serial::CaSn(crate::serial::Serial::from_der_content(&[0x2B]).unwrap());
        let applied = |inactivated| Imported {
            ca_sn,
            inactivated,
            blocked: 0,
            already_inactive: 1,
        };
        let refreshed = |outcome| Refreshed {
            ca_sn,
            source: "https://pki.example/fleet.crl".into(),
            index: 0,
            serials: 3,
            outcome,
            duration: Duration::from_millis(2),
        };
        let stopped = |inactivated| ImportError {
            reason: "the registry could not be written".into(),
            done: 1,
            total: 3,
            applied: applied(inactivated),
        };
        record(refreshed(Err(stopped(0)))).await;
        record(refreshed(Err(stopped(1)))).await;
        record(refreshed(Ok(applied(2)))).await;
        let lines: Vec<Value> = std::fs::read_to_string(dir.path().join(FILE_NAME))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!(lines[0]["code"], "ImportFailed");
        assert_eq!(lines[0]["outcome"]["inactivated"], 1);
        assert!(
            lines[0]["message"]
                .as_str()
                .unwrap()
                .contains("1 of the CRL's 3 serials were applied"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1]["code"], "Success");
        assert_eq!(lines[1]["by"], "crl-refresh");
        assert_eq!(lines[1]["node"], "node-a");
        assert_eq!(lines[1]["targets"]["CaSn"], "2B");
        assert_eq!(
            lines[1]["targets"]["Source"],
            "tls.crl[0] https://pki.example/fleet.crl"
        );
        assert_eq!(lines[1]["outcome"]["inactivated"], 2);
        assert_eq!(lines[1]["outcome"]["serials"], 3);
        assert_eq!(failures.get(), 0);
    }
}
