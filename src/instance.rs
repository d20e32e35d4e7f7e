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
//! While the broker runs, `listen.json` next to it says where it listens
//! ([`Listening`]).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

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
    #[error("storage.data_dir: cannot write {path}: {source}")]
    ListenFile { path: PathBuf, source: io::Error },
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

/// The file in the data directory that says where the broker listens.
pub const LISTEN_FILE: &str = "listen.json";

/// Where a running broker listens, as `<data_dir>/listen.json` says:
/// `{"mqtt":"127.0.0.1:8883","admin":"127.0.0.1:8080","pid":1234}`.
///
/// The broker writes it once both listeners are bound (so it names the
/// ports actually bound, also when the configuration asks for port 0) and
/// removes it when it stops. One left by a killed broker names a `pid`
/// that is gone, until the next broker on the directory replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    /// The broker's process id.
    pub pid: u32,
}

impl Listening {
    /// Reads `<data_dir>/listen.json`.
    pub fn read(data_dir: &Path) -> io::Result<Listening> {
        let text = fs::read(data_dir.join(LISTEN_FILE))?;
        Ok(serde_json::from_slice(&text)?)
    }
}

/// An exclusively locked data directory; unlocked when dropped.
pub struct DataDir {
    path: PathBuf,
    /// Whether this process wrote `listen.json` (removed on drop, before the
    /// lock is released).
    wrote_listen_file: bool,
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
        // Left by a broker that was killed: it no longer says anything true.
        let _ = fs::remove_file(dir.join(LISTEN_FILE));
        Ok(DataDir {
            path: dir.to_path_buf(),
            wrote_listen_file: false,
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

    /// Writes `listen.json` atomically (a temporary file in the directory,
    /// renamed over it): a reader sees the whole file or none.
    pub fn write_listen_file(&mut self, listening: &Listening) -> Result<(), InstanceError> {
        let path = self.path.join(LISTEN_FILE);
        let temporary = self.path.join(format!(".{LISTEN_FILE}.tmp"));
        let write = || -> io::Result<()> {
            fs::write(&temporary, serde_json::to_vec(listening)?)?;
            fs::rename(&temporary, &path)
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&temporary);
            return Err(InstanceError::ListenFile { path, source });
        }
        self.wrote_listen_file = true;
        Ok(())
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.wrote_listen_file {
            let _ = fs::remove_file(self.path.join(LISTEN_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_file_is_written_whole_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let listening = Listening {
            mqtt: "127.0.0.1:18883".parse().unwrap(),
            admin: "127.0.0.1:18080".parse().unwrap(),
            pid: 42,
        };
        let mut data_dir = DataDir::lock(dir.path()).unwrap();
        data_dir.write_listen_file(&listening).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(LISTEN_FILE)).unwrap(),
            r#"{"mqtt":"127.0.0.1:18883","admin":"127.0.0.1:18080","pid":42}"#
        );
        assert_eq!(Listening::read(dir.path()).unwrap(), listening);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")));
        drop(data_dir);
        assert!(!dir.path().join(LISTEN_FILE).exists());
    }

    #[test]
    fn a_stale_listen_file_is_removed_when_the_directory_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LISTEN_FILE), "{}").unwrap();
        let _data_dir = DataDir::lock(dir.path()).unwrap();
        assert!(Listening::read(dir.path()).is_err());
    }

    #[test]
    fn an_unwritable_listen_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut data_dir = DataDir::lock(dir.path()).unwrap();
        // A directory in its place cannot be replaced by a file.
        fs::create_dir(dir.path().join(LISTEN_FILE)).unwrap();
        let listening = Listening {
            mqtt: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            pid: 1,
        };
        let err = data_dir.write_listen_file(&listening).unwrap_err();
        assert!(err.to_string().contains("listen.json"), "{err}");
        assert!(!dir.path().join(".listen.json.tmp").exists());
    }
}
