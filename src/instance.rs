//! The MQTT instance this broker serves, and its data directory.
//!
//! The instance's id, edition and owner come from the configuration; its
//! registration code (what CA registration proves possession with: the
//! operator signs a verification certificate whose subject CN is this code)
//! is made once and kept in the registry store.
//!
//! One broker at a time owns a data directory: [`DataDir::lock`] takes an
//! exclusive lock on `certmq.lock` inside it for the broker's lifetime, so a
//! second broker (or `certmq registry import`) cannot write the same store.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::Settings;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "storage.data_dir: cannot create {path}: {source} (check the path and its permissions)"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage.data_dir: cannot open the lock file {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage.data_dir {path} is in use by another certmq process (stop it first)")]
    Locked { path: PathBuf },
}

/// The instance: configuration plus its registration code.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub edition: String,
    pub owner: String,
    pub registration_code: String,
}

impl Instance {
    pub fn new(settings: &Settings, registration_code: String) -> Instance {
        Instance {
            id: settings.instance.id.clone(),
            edition: settings.instance.edition.clone(),
            owner: settings.instance.owner.clone(),
            registration_code,
        }
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

/// An exclusively locked data directory; unlocked when dropped.
pub struct DataDir {
    path: PathBuf,
    _lock: Flock<fs::File>,
}

impl DataDir {
    /// Creates (if needed) and locks the data directory.
    pub fn lock(dir: &Path) -> Result<DataDir, InstanceError> {
        ensure_data_dir(dir)?;
        let lock_path = dir.join("certmq.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| InstanceError::LockFile {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            InstanceError::Locked {
                path: dir.to_path_buf(),
            }
        })?;
        Ok(DataDir {
            path: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry database file.
    pub fn registry_db(&self) -> PathBuf {
        self.path.join(crate::store::sqlite::FILE_NAME)
    }
}
