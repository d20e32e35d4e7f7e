//! The MQTT instance this broker serves: its id, edition and owner from the
//! configuration, and its registration code, made once and kept in the data
//! directory.
//!
//! The registration code is what CA registration proves possession with:
//! the operator signs a verification certificate whose subject CN is this
//! code with the CA's key (GetRegisterCode, then RegisterCaCertificate).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Settings;

/// Why the instance state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "storage.data_dir: cannot create {path}: {source} (check the path and its permissions)"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no registration code; delete it to make a new one (registered CAs keep theirs)"
    )]
    EmptyCode { path: PathBuf },
}

/// The instance: configuration plus its registration code.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub edition: String,
    pub owner: String,
    pub registration_code: String,
}

const CODE_FILE: &str = "registration-code";

impl Instance {
    /// Opens the instance state in `storage.data_dir`, creating it (and the
    /// registration code) on first use.
    pub fn open(settings: &Settings) -> Result<Instance, InstanceError> {
        let dir = &settings.storage.data_dir;
        ensure_data_dir(dir)?;
        let path = dir.join(CODE_FILE);
        let file_err = |source| InstanceError::File {
            path: path.clone(),
            source,
        };
        let registration_code = match fs::read_to_string(&path) {
            Ok(text) => {
                let code = text.trim().to_owned();
                if code.is_empty() {
                    return Err(InstanceError::EmptyCode { path });
                }
                code
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let code = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(file_err)?;
                file.write_all(code.as_bytes()).map_err(file_err)?;
                code
            }
            Err(e) => return Err(file_err(e)),
        };
        Ok(Instance {
            id: settings.instance.id.clone(),
            edition: settings.instance.edition.clone(),
            owner: settings.instance.owner.clone(),
            registration_code,
        })
    }

    /// Whether certificate operations are available (platinum edition).
    pub fn supports_certificates(&self) -> bool {
        self.edition.eq_ignore_ascii_case("platinum")
    }
}

/// Creates the data directory (mode 0700) if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), InstanceError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| InstanceError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}
