//! The official Alibaba Cloud SDKs against a real `certmq serve`: a Python
//! venv with `alibabacloud-onsmqtt20200420` (V3) and `aliyun-python-sdk-core`
//! (V1) runs `tests/sdk/sdk_flow.py` (the whole lifecycle, every operation,
//! every documented error code). Needs python3 and PyPI, and the mosquitto
//! clients for the devices; skipped outside CI when they are missing.
//!
//! Twice: over plain HTTP (loopback, the default), and over HTTPS
//! (`admin.tls_cert`, a certificate made with `certmq pki`), with each SDK
//! given the CA as its users would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{python, wait_listening};

const BIN: &str = env!("CARGO_BIN_EXE_certmq");
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");

/// The venv with the pinned SDKs (shared by the flows).
fn venv() -> PathBuf {
    python::venv("sdk-venv", &Path::new(SDK_DIR).join("requirements.txt"))
}

/// A `certmq serve` process, stopped on drop.
pub(crate) struct Serve {
    child: Option<Child>,
    pub(crate) mqtt: u16,
    pub(crate) admin: u16,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

const KEYS: &str = r#"{"admin": ["LTAI5tSdkAdmin0000000001", "sdk-admin-secret-0123456789"],
 "readonly": ["LTAI5tSdkReadOnly000001", "sdk-readonly-secret-012345"],
 "other": ["LTAI5tSdkOtherAcct00001", "sdk-other-secret-0123456789"]}"#;

/// The admin API's certificate, made as an operator would (`certmq pki`).
struct AdminCert {
    dir: tempfile::TempDir,
}

impl AdminCert {
    fn new() -> AdminCert {
        let dir = tempfile::tempdir().unwrap();
        let pki = |args: &[&str]| {
            let output = Command::new(BIN)
                .arg("pki")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "certmq pki {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        pki(&[
            "create-ca",
            "--cn",
            "SDK admin CA",
            "--out-cert",
            "admin-ca.pem",
            "--out-key",
            "admin-ca.key",
        ]);
        pki(&[
            "issue-server",
            "--ca-cert",
            "admin-ca.pem",
            "--ca-key",
            "admin-ca.key",
            "--name",
            "127.0.0.1",
            "--name",
            "localhost",
            "--out-cert",
            "admin.pem",
            "--out-key",
            "admin.key",
        ]);
        AdminCert { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[admin]` lines that turn TLS on.
    fn config(&self) -> String {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            self.path("admin.pem").display().to_string(),
            self.path("admin.key").display().to_string()
        )
    }
}

/// Topic authorization for the lifecycle flow: its devices use topics of
/// their own naming.
const ALLOW_ALL: &str = r##"
[authz]
default_policies = ["allow-all"]
[[authz.policies]]
name = "allow-all"
rules = [{ effect = "allow", actions = ["publish", "subscribe"], topics = ["#"] }]
[[authz.policies]]
name = "fleet-application"
rules = [{ effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/#"] }]
"##;

fn serve(edition: &str, tls: Option<&AdminCert>) -> Serve {
    serve_with(edition, tls, ALLOW_ALL)
}

/// `authz`: the `[authz]` section (empty: the embedded defaults).
fn serve_with(edition: &str, tls: Option<&AdminCert>, authz: &str) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let admin_tls = tls.map(AdminCert::config).unwrap_or_default();
    let config = format!(
        r##"
[instance]
edition = "{edition}"
owner = "fleet-account"

[mqtt]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
{admin_tls}

[[admin.access_keys]]
id = "LTAI5tSdkAdmin0000000001"
secret = "sdk-admin-secret-0123456789"
account = "fleet-account"
actions = ["mq:*"]

[[admin.access_keys]]
id = "LTAI5tSdkReadOnly000001"
secret = "sdk-readonly-secret-012345"
account = "fleet-account"
actions = ["mq:Get*", "mq:List*", "mq:Query*"]

[[admin.access_keys]]
id = "LTAI5tSdkOtherAcct00001"
secret = "sdk-other-secret-0123456789"
account = "another-account"
actions = ["mq:*"]

[admin.rate_limits]
ListCaCertificate = 5
{authz}
"##
    );
    std::fs::write(dir.path().join("certmq.toml"), config).unwrap();
    spawn(dir)
}

/// Runs `certmq serve` in `dir` (its `certmq.toml`, its data).
pub(crate) fn spawn(dir: tempfile::TempDir) -> Serve {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "certmq.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let listening = wait_listening(&dir.path().join("data"), child.id(), || {
        child.try_wait().unwrap()
    })
    .unwrap_or_else(|status| panic!("certmq serve exited with {status} (its stderr is above)"));
    Serve {
        child: Some(child),
        mqtt: listening.mqtt.port(),
        admin: listening.admin.port(),
        dir: Some(dir),
    }
}

impl Serve {
    /// Stops the broker (SIGKILL: nothing is flushed on the way out) and
    /// starts it again on the same configuration and data.
    fn restart(mut self) -> Serve {
        self.stop();
        spawn(self.dir.take().unwrap())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker, keeping its directory for another start.
    pub(crate) fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        self.dir.take().unwrap()
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

#[test]
fn official_sdks_drive_the_whole_certificate_api() {
    sdk_flow(None);
}

#[test]
fn official_sdks_drive_the_whole_certificate_api_over_https() {
    sdk_flow(Some(&AdminCert::new()));
}

/// Runs `script` (in tests/sdk) with the venv's python against `broker`;
/// its output, asserting it succeeded.
fn run_script(script: &str, args: &[&str], broker: &Serve, clients: &Path) -> String {
    let output = Command::new(venv().join("bin/python"))
        .arg(Path::new(SDK_DIR).join(script))
        .args(args)
        .env_remove("ALIBABA_CLOUD_CA_BUNDLE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env("CERTMQ_BIN", BIN)
        .env("CERTMQ_WORKDIR", clients)
        .env("CERTMQ_ENDPOINT", format!("127.0.0.1:{}", broker.admin))
        .env("CERTMQ_MQTT_PORT", broker.mqtt.to_string())
        .env("CERTMQ_SERVER_CA", broker.path().join("certs/dev/ca.pem"))
        .env("CERTMQ_INSTANCE", "mqtt-certmq-local")
        .env("CERTMQ_KEYS", KEYS)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The official V3 SDK manages custom permissions on a broker with the
/// embedded policies: a DENY SUB for one device takes its live
/// subscription before the answer and refuses new ones, is listed,
/// survives a restart, and its deletion restores the default.
#[test]
fn official_sdk_manages_custom_permissions() {
    if !python::tools_available() {
        return;
    }
    let broker = serve_with("platinum", None, "");
    let clients = tempfile::tempdir().unwrap();
    let before = run_script("custom_auth.py", &["before"], &broker, clients.path());
    assert!(before.contains("before: passed"), "{before}");
    let broker = broker.restart();
    let after = run_script("custom_auth.py", &["after"], &broker, clients.path());
    assert!(after.contains("after: passed"), "{after}");
}

fn sdk_flow(tls: Option<&AdminCert>) {
    if !python::tools_available() {
        return;
    }
    let venv = venv();
    let platinum = serve("platinum", tls);
    let standard = serve("standard", tls);
    let clients = tempfile::tempdir().unwrap();
    let mut command = Command::new(venv.join("bin/python"));
    if let Some(tls) = tls {
        command
            .env("CERTMQ_ADMIN_PROTOCOL", "https")
            .env("CERTMQ_ADMIN_CA", tls.path("admin-ca.pem"));
    }
    let output = command
        .arg(Path::new(SDK_DIR).join("sdk_flow.py"))
        // Only what the flow configures decides what the SDKs trust.
        .env_remove("ALIBABA_CLOUD_CA_BUNDLE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env("CERTMQ_BIN", BIN)
        .env("CERTMQ_WORKDIR", clients.path())
        .env("CERTMQ_ENDPOINT", format!("127.0.0.1:{}", platinum.admin))
        .env(
            "CERTMQ_STANDARD_ENDPOINT",
            format!("127.0.0.1:{}", standard.admin),
        )
        .env("CERTMQ_MQTT_PORT", platinum.mqtt.to_string())
        .env("CERTMQ_SERVER_CA", platinum.path().join("certs/dev/ca.pem"))
        .env("CERTMQ_INSTANCE", "mqtt-certmq-local")
        .env("CERTMQ_KEYS", KEYS)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the SDK flow failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"));
    if tls.is_some() {
        assert!(stdout.contains("both SDKs verify"), "{stdout}");
    }
}
