//! Python venvs for tests that drive certmq with Python clients (the
//! official SDKs, Eclipse Paho): made once per requirements file, kept in
//! the target directory between runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Whether `program` can be run at all.
pub fn available(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok()
}

/// Whether python3 (with venv) and the mosquitto clients are here: under
/// CI they must be; elsewhere the test is skipped, saying so.
pub fn tools_available() -> bool {
    let ci = std::env::var_os("CI").is_some();
    for (program, arg, package) in [
        ("python3", "--version", "python3 python3-venv"),
        ("mosquitto_pub", "--help", "mosquitto-clients"),
    ] {
        if !available(program, arg) {
            assert!(!ci, "{program} is missing: apt-get install -y {package}");
            eprintln!("skipping: {program} is not installed");
            return false;
        }
    }
    true
}

/// A venv named `name` with the pinned packages of `requirements`
/// installed from PyPI (made once per test process, reused across runs
/// while the requirements are unchanged).
pub fn venv(name: &str, requirements: &Path) -> PathBuf {
    static MADE: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    let made = made.get_or_insert_with(HashMap::new);
    if let Some(dir) = made.get(name) {
        return dir.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let wanted = std::fs::read_to_string(requirements).unwrap();
    let marker = dir.join("certmq-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "python3 -m venv failed (Debian: apt-get install python3-venv)"
        );
        let status = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip could not install {}",
            requirements.display()
        );
        std::fs::write(&marker, wanted).unwrap();
    }
    made.insert(name.to_owned(), dir.clone());
    dir
}
