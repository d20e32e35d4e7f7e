//! Where the admin API's access keys come from: the configuration, or, when
//! it names none, a key generated on first start for the instance owner and
//! kept in the data directory (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::auth::{AccessKey, generate_access_key};
use crate::config::Settings;
use crate::instance::{InstanceError, ensure_data_dir};

/// The file of the generated access key, inside `storage.data_dir`.
pub const GENERATED_KEY_FILE: &str = "admin-access-key.json";

/// Access keys, and the file of the generated one if that is in use.
pub struct LoadedKeys {
    pub keys: Vec<AccessKey>,
    pub generated_file: Option<PathBuf>,
}

/// Why the access keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    DataDir(#[from] InstanceError),
    #[error("cannot read or write the admin access key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The configured keys, or the generated one (created if missing).
pub fn load(settings: &Settings) -> Result<LoadedKeys, KeyError> {
    if !settings.admin.access_keys.is_empty() {
        return Ok(LoadedKeys {
            keys: settings.admin.access_keys.clone(),
            generated_file: None,
        });
    }
    ensure_data_dir(&settings.storage.data_dir)?;
    let path = settings.storage.data_dir.join(GENERATED_KEY_FILE);
    let fail = |reason: String| KeyError::File {
        path: path.clone(),
        reason,
    };
    let key = match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<AccessKey>(&text)
            .map_err(|e| fail(format!("{e}; delete the file to generate a new key")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_access_key(&settings.instance.owner);
            let text = serde_json::to_string_pretty(&key).map_err(|e| fail(e.to_string()))?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| fail(e.to_string()))?;
            file.write_all(text.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            key
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    Ok(LoadedKeys {
        keys: vec![key],
        generated_file: Some(path),
    })
}

/// Reads the generated key file (for the `certmq admin` client).
pub fn read_generated(settings: &Settings) -> Option<AccessKey> {
    let text = fs::read_to_string(settings.storage.data_dir.join(GENERATED_KEY_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
