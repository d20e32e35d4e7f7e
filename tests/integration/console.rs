//! The web console (issue 15) in a real browser: Debian's chromium driven
//! by playwright-core (`tests/console/console_test.mjs`), against a real
//! `certmq serve` on embedded defaults, with real MQTT sessions (the
//! mosquitto clients) that the console's buttons cut off.
//!
//! First with the generated access key: a wrong secret shows the API's
//! SignatureDoesNotMatch; Inactivate on a connected dev-PKI device closes
//! its session, refuses its reconnect and shows the new status without a
//! reload; Activate brings it back; a CA registered through the upload
//! form lists its first auto-registered device; search; a session looked
//! up and kicked; the overview; sign-out forgets the key. Screenshots of
//! every page (1280x800) go to `docs/console/`. Then with a read-only key
//! (signed in by keyboard): Inactivate shows PermissionCheckFailed and the
//! session stays. Throughout: no request leaves the broker, no CSP
//! violation, no page error.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sdk::{Serve, spawn};
use crate::support::python::available;

const BIN: &str = env!("CARGO_BIN_EXE_certmq");
const CONSOLE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console");
const SCREENSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console");
const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether chromium, node/npm and the mosquitto clients are here; under CI
/// they must be.
fn tools() -> bool {
    let ci = std::env::var_os("CI").is_some();
    let missing: Vec<&str> = [
        (Path::new(CHROMIUM).exists(), "chromium"),
        (available("node", "--version"), "nodejs"),
        (available("npm", "--version"), "npm"),
        (available("mosquitto_sub", "--help"), "mosquitto-clients"),
    ]
    .into_iter()
    .filter(|(here, _)| !here)
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !ci,
        "the console test needs {missing:?}: apt-get install -y {}",
        missing.join(" ")
    );
    eprintln!("skipping: {missing:?} not installed");
    false
}

/// playwright-core as pinned in tests/console/package-lock.json, installed
/// once into the target directory (`npm ci`).
fn playwright() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-node");
    let lock = std::fs::read_to_string(Path::new(CONSOLE_DIR).join("package-lock.json")).unwrap();
    let marker = dir.join("certmq-lock.json");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(lock.as_str()) {
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(Path::new(CONSOLE_DIR).join(file), dir.join(file)).unwrap();
        }
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "npm ci (playwright-core) failed in {}",
            dir.display()
        );
        std::fs::write(&marker, lock).unwrap();
    }
    dir
}

fn run_phase(phase: &str, broker: &Serve, key: (&str, &str), node_modules: &Path) {
    let output = Command::new("node")
        .arg(Path::new(CONSOLE_DIR).join("console_test.mjs"))
        .env("CERTMQ_PHASE", phase)
        .env("CERTMQ_ADMIN", format!("http://127.0.0.1:{}", broker.admin))
        .env("CERTMQ_MQTT_PORT", broker.mqtt.to_string())
        .env("CERTMQ_DIR", broker.path())
        .env("CERTMQ_BIN", BIN)
        .env("CERTMQ_KEY_ID", key.0)
        .env("CERTMQ_KEY_SECRET", key.1)
        .env("CERTMQ_SCREENSHOTS", SCREENSHOTS)
        .env("PLAYWRIGHT_DIR", node_modules)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the console's {phase} phase failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const BASE: &str = "[mqtt]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n";

#[test]
fn the_console_cuts_a_device_off_with_one_click_in_a_real_browser() {
    if !tools() {
        return;
    }
    let node_modules = playwright();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("certmq.toml"), BASE).unwrap();
    let broker = spawn(dir);

    // Served with a strict policy, from the binary.
    let _ = rustls::crypto::CryptoProvider::install_default((*certmq::tls::provider()).clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let page = runtime
        .block_on(reqwest::get(format!(
            "http://127.0.0.1:{}/console/",
            broker.admin
        )))
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for wanted in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(wanted), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let html = runtime.block_on(page.text()).unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" on"),
        "inline script in the page"
    );

    // The generated key, as the operator finds it.
    let key: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(broker.path().join("data/admin-access-key.json")).unwrap(),
    )
    .unwrap();
    let (id, secret) = (key["id"].as_str().unwrap(), key["secret"].as_str().unwrap());
    run_phase("admin", &broker, (id, secret), &node_modules);

    // The same broker with that key and a read-only one configured.
    let dir = broker.into_dir();
    let config = format!(
        "{BASE}\n[[admin.access_keys]]\nid = {id:?}\nsecret = {secret:?}\naccount = {:?}\nactions = [\"mq:*\"]\n\n\
         [[admin.access_keys]]\nid = \"LTAI5tConsoleReadOnly01\"\nsecret = \"console-readonly-secret-0123\"\n\
         account = {:?}\nactions = [\"mq:Get*\", \"mq:List*\", \"mq:Query*\"]\n",
        key["account"].as_str().unwrap(),
        key["account"].as_str().unwrap(),
    );
    std::fs::write(dir.path().join("certmq.toml"), config).unwrap();
    let broker = spawn(dir);
    run_phase(
        "readonly",
        &broker,
        ("LTAI5tConsoleReadOnly01", "console-readonly-secret-0123"),
        &node_modules,
    );
}
