//! The `certmq` binary: `serve` on embedded defaults (development PKI),
//! configuration errors, and the `pki` subcommands.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use certmq::instance::Listening;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::support::mqtt::{Version, connect_with};
use crate::support::pki::serial_of;
use crate::support::{self, Ca, Device};

const BIN: &str = env!("CARGO_BIN_EXE_certmq");

fn certmq(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        // The test build's fault-injection hooks are armed for these runs.
        .env("CERTMQ_FAULT_INJECTION", "1")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Asserts that a command succeeded, showing what it wrote if not.
fn assert_succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "exited with {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn device_from_files(dir: &Path, name: &str, ca: &str) -> Device {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    let ca_pem = std::fs::read_to_string(dir.join(ca)).unwrap();
    Device {
        name: name.into(),
        identity: certmq::DeviceIdentity {
            ca_sn: certmq::CaSn(serial_of(&ca_pem)),
            device_sn: certmq::DeviceSn(serial_of(&cert_pem)),
        },
        cert_pem,
        key_pem,
    }
}

/// Runs `certmq serve` in `dir`, on any free ports, until it has printed its
/// banner (and the line about the admin access key after it); returns the
/// child, what it printed and where it listens. Its stdout keeps being read,
/// so the pipe never closes under it.
async fn serve(dir: &Path) -> (Child, String, Listening) {
    let mut child = certmq(dir)
        .arg("serve")
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("certmq admin <Action>") {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "no banner from certmq serve; got {banner}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let listening = listening(&mut child, &dir.join("data")).await;
    (child, banner, listening)
}

/// Where `child` (`certmq serve` on `data_dir`) listens, once it does.
async fn listening(child: &mut Child, data_dir: &Path) -> Listening {
    let pid = child.id().unwrap();
    match support::wait_listening(data_dir, pid, || child.try_wait().unwrap()) {
        Ok(listening) => listening,
        Err(status) => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await;
            }
            panic!("certmq serve exited with {status}: {stderr}")
        }
    }
}

/// A child's stderr, line by line as it is written, so that a test can wait
/// for what the broker logs.
struct Logs {
    lines: mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Logs {
    fn follow(child: &mut Child) -> Logs {
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Logs {
            lines,
            seen: String::new(),
        }
    }

    /// Waits (10 s at most) for a line containing `text`.
    async fn wait_for(&mut self, text: &str) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(text) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "no log line with `{text}`; logged: {}",
            self.seen
        );
    }

    /// Everything logged, once the process has closed its stderr.
    async fn all(mut self) -> String {
        while let Some(line) = self.lines.recv().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.seen
    }
}

/// An address where nothing listens: a socket bound to it that does not
/// listen (connections are refused) and keeps anyone else from taking it.
fn nothing_listening() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Stops `certmq serve` with SIGTERM; returns what it logged (stderr).
async fn sigterm_and_wait(child: Child) -> String {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("certmq did not stop on SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "certmq exited with {}: {stderr}",
        output.status
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_embedded_defaults_with_a_development_pki() {
    let dir = tempfile::tempdir().unwrap();
    let (child, banner, listening) = serve(dir.path()).await;
    let mqtt = listening.mqtt.port();
    assert!(banner.contains("DEVELOPMENT PKI"), "{banner}");
    assert!(banner.contains("mosquitto_sub"), "{banner}");
    assert!(banner.contains("InactivateDeviceCertificate"), "{banner}");
    let pki = dir.path().join("certs/dev");
    let readme = std::fs::read_to_string(pki.join("README.txt")).unwrap();
    assert!(readme.contains("DEVELOPMENT"));
    let mode_of = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(
        mode_of(&pki.join("device-1.key")),
        0o600,
        "private keys are not world-readable"
    );

    // A device of the development PKI connects; the dev CA was registered.
    let server_ca = Ca::from_files(&pki.join("ca.pem"), &pki.join("ca.key"));
    let device = device_from_files(&pki, "device-1", "ca.pem");
    let device2 = device_from_files(&pki, "device-2", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    let mut client = connect_with(mqtt, tls, "device-1", Version::V5, |_| {})
        .await
        .unwrap();

    // The generated admin access key: a 0600 file in the data directory,
    // used by `certmq admin` run from the same place (which finds the port
    // of an admin.listen with port 0 in listen.json there).
    let key_file = dir.path().join("data/admin-access-key.json");
    assert!(banner.contains("data/admin-access-key.json"), "{banner}");
    assert_eq!(mode_of(&key_file), 0o600);
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(!banner.contains(&secret), "the banner shows the secret");
    let admin_cli = |args: &[&str]| {
        let mut cmd = certmq(dir.path());
        cmd.arg("admin")
            .args(args)
            .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0");
        cmd
    };
    let output = admin_cli(&["GetRegisterCode", "--MqttInstanceId", "mqtt-certmq-local"])
        .output()
        .await
        .unwrap();
    assert_succeeded(&output);
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        answer["RegisterCode"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{answer}"
    );
    let (ca_sn, device_sn) = (
        device.identity.ca_sn.to_string(),
        device.identity.device_sn.to_string(),
    );
    let output = admin_cli(&[
        "InactivateDeviceCertificate",
        "--MqttInstanceId=mqtt-certmq-local",
        "--CaSn",
        &ca_sn,
        "--DeviceSn",
        &device_sn,
    ])
    .output()
    .await
    .unwrap();
    assert_succeeded(&output);
    assert_eq!(
        client.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    // An error answer exits non-zero, the answer printed.
    let output = admin_cli(&["GetCaCertificate", "--MqttInstanceId", "mqtt-certmq-local"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("ParameterFieldCheckFailed"));
    // A broker that is not there: one clear line, no backtrace.
    let (_socket, nowhere) = nothing_listening();
    let output = certmq(dir.path())
        .args([
            "admin",
            "--endpoint",
            &nowhere.to_string(),
            "GetRegisterCode",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("certmq: the admin API at") && !stderr.contains("backtrace"),
        "{stderr}"
    );

    let ca_before = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let logs = sigterm_and_wait(child).await;
    // One audit record for the one mutating call, naming the key, the
    // action, its targets and its outcome; the secret appears nowhere.
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("certmq::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "{logs}");
    for field in [
        key["id"].as_str().unwrap(),
        "InactivateDeviceCertificate",
        "Success",
        device_sn.as_str(),
    ] {
        assert!(
            audit[0].contains(field),
            "{field} missing from {}",
            audit[0]
        );
    }
    assert!(!logs.contains(&secret), "the logs show the secret");
    assert!(
        !dir.path().join("data/listen.json").exists(),
        "listen.json outlived the broker"
    );

    // A second start reuses the PKI and the key.
    let (child, banner, listening) = serve(dir.path()).await;
    assert!(banner.contains("DEVELOPMENT PKI"));
    assert_eq!(
        std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        ca_before
    );
    let key_after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(key_after, key);
    let tls = crate::support::pki::client_config(&server_ca, Some(&device2));
    connect_with(listening.mqtt.port(), tls, "device-2", Version::V4, |_| {})
        .await
        .unwrap();
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 3] = [
        ("CERTMQ__MQTT__LISTEN", "not-an-address", "mqtt.listen"),
        (
            "CERTMQ__MQTT__HANDSHAKE_TIMEOUT_MS",
            "soon",
            "handshake_timeout_ms",
        ),
        (
            "CERTMQ__TLS__SERVER_CERT",
            "/nonexistent/server.pem",
            "tls.server_key",
        ),
    ];
    for (var, value, key) in cases {
        let output = certmq(dir.path())
            .arg("serve")
            .env(var, value)
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
    let missing = certmq(dir.path())
        .args(["serve", "--config", "missing.toml"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.toml"));

    // A server certificate file that does not exist is named.
    let output = certmq(dir.path())
        .arg("serve")
        .env("CERTMQ__TLS__SERVER_CERT", "/nonexistent/server.pem")
        .env("CERTMQ__TLS__SERVER_KEY", "/nonexistent/server.key")
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/server.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_subcommands_make_certificates_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(BIN)
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "pki",
        "create-ca",
        "--cn",
        "Factory CA",
        "--out-cert",
        "ca.pem",
        "--out-key",
        "ca.key",
    ]);
    run(&[
        "pki",
        "issue-device",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--cn",
        "meter-7",
        "--out-cert",
        "meter-7.pem",
        "--out-key",
        "meter-7.key",
        "--key",
        "ed25519",
    ]);
    run(&[
        "pki",
        "issue-server",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--out-cert",
        "server.pem",
        "--out-key",
        "server.key",
    ]);
    run(&[
        "pki",
        "verification-cert",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--code",
        "REG-CODE-42",
        "--out-cert",
        "verify.pem",
        "--out-key",
        "verify.key",
    ]);

    // The verification certificate names the code and is issued by the CA.
    let verify = std::fs::read_to_string(d.join("verify.pem")).unwrap();
    let der = pem::parse(&verify).unwrap();
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        _,
    >>::from_der(der.contents())
    .unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "REG-CODE-42"
    );
    assert!(cert.issuer().to_string().contains("Factory CA"));

    // The broker runs on the server certificate and admits the device.
    let server_ca = Ca::from_files(&d.join("ca.pem"), &d.join("ca.key"));
    let tb = support::start_with(&[&server_ca], |s| {
        s.tls.server_cert = d.join("server.pem").display().to_string();
        s.tls.server_key = d.join("server.key").display().to_string();
    })
    .await;
    let device = device_from_files(d, "meter-7", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    connect_with(tb.port(), tls, "meter-7", Version::V4, |_| {})
        .await
        .unwrap();
    let record = tb
        .broker
        .registry()
        .device(&device.identity)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*record.name, "meter-7");

    // --help explains the subcommands.
    let help = std::process::Command::new(BIN)
        .args(["pki", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in [
        "create-ca",
        "issue-device",
        "issue-server",
        "verification-cert",
    ] {
        assert!(help.contains(sub), "{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_export_and_import_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _, listening) = serve(dir.path()).await;
    let pki = dir.path().join("certs/dev");
    let server_ca = Ca::from_files(&pki.join("ca.pem"), &pki.join("ca.key"));
    let device = device_from_files(&pki, "device-3", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    connect_with(listening.mqtt.port(), tls, "device-3", Version::V4, |_| {})
        .await
        .unwrap();

    // A custom permission, through `certmq admin`.
    let identity = format!("{}:{}", device.identity.ca_sn, device.identity.device_sn);
    let output = certmq(dir.path())
        .args([
            "admin",
            "AddCustomAuthPermission",
            "--InstanceId=mqtt-certmq-local",
            "--IdentityType=DEVICE",
            &format!("--Identity={identity}"),
            "--Topic=devices/device-3/secret",
            "--PermitAction=SUB",
            "--Effect=DENY",
        ])
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert_succeeded(&output);

    // Export works while the broker runs; import does not.
    let output = certmq(dir.path())
        .args(["registry", "export", "--output", "backup.jsonl"])
        .output()
        .await
        .unwrap();
    assert_succeeded(&output);
    let backup = std::fs::read_to_string(dir.path().join("backup.jsonl")).unwrap();
    assert_eq!(
        backup.lines().count(),
        4,
        "instance, the dev CA, device-3, the permission: {backup}"
    );
    assert!(backup.contains(r#""kind":"permission""#) && backup.contains(&identity));
    assert!(backup.contains(&device.identity.device_sn.to_string()));
    let output = certmq(dir.path())
        .args(["registry", "import", "backup.jsonl"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use by another certmq process"));
    sigterm_and_wait(child).await;

    // Into another data directory, with the broker stopped.
    let output = certmq(dir.path())
        .args(["registry", "import", "backup.jsonl"])
        .env("CERTMQ__STORAGE__DATA_DIR", "restored")
        .output()
        .await
        .unwrap();
    assert_succeeded(&output);
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("imported 1 CAs, 1 device certificates and 1 custom permissions")
    );
    let output = certmq(dir.path())
        .args(["registry", "export"])
        .env("CERTMQ__STORAGE__DATA_DIR", "restored")
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), backup);
}

/// SIGHUP re-reads `[authz]` from the file: a live subscription the
/// tightened policies refuse goes with its session, the custom
/// permissions added through the API stay in force, and a file with an
/// invalid policy changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_judges_live_sessions_and_keeps_custom_permissions() {
    use crate::authz::{
        puback_reason, publish_qos1, raw_session_at, read_packet, suback_codes, subscribe,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = Ca::new("reload server CA");
    let fleet = Ca::new("reload fleet CA");
    let (cert, key) = server_ca.server();
    std::fs::write(d.join("server.pem"), &cert).unwrap();
    std::fs::write(d.join("server.key"), &key).unwrap();
    std::fs::write(d.join("fleet.pem"), &fleet.cert_pem).unwrap();
    let config = |app_topic: &str| {
        format!(
            r#"[tls]
server_cert = "server.pem"
server_key = "server.key"
ca_files = ["fleet.pem"]

[authz]
default_policies = ["own-namespace"]
[[authz.policies]]
name = "own-namespace"
rules = [{{ effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/${{CommonName}}/#"] }}]
[[authz.policies]]
name = "fleet-application"
rules = [{{ effect = "allow", actions = ["publish", "subscribe"], topics = ["{app_topic}"] }}]
[[authz.attach]]
policies = ["fleet-application"]
common_name = "watcher"
"#
        )
    };
    std::fs::write(d.join("certmq.toml"), config("devices/#")).unwrap();
    let mut child = certmq(d)
        .args(["serve", "--config", "certmq.toml"])
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut logs = Logs::follow(&mut child);
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let mqtt = listening(&mut child, &d.join("data")).await.mqtt.port();
    let (watcher, talker) = (fleet.device("watcher"), fleet.device("talker"));

    let mut app = raw_session_at(mqtt, &server_ca, &watcher, 5, "watcher").await;
    app.write_all(&subscribe(5, 1, &["devices/#"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut app).await), [0x01]);
    // A custom permission for the talker's client id, through the API.
    let output = certmq(d)
        .args([
            "admin",
            "--config",
            "certmq.toml",
            "AddCustomAuthPermission",
            "--InstanceId=mqtt-certmq-local",
            "--IdentityType=CLIENT",
            "--Identity=talker",
            "--Topic=fleet/notices",
            "--PermitAction=SUB",
            "--Effect=ALLOW",
        ])
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert_succeeded(&output);
    let mut dev = raw_session_at(mqtt, &server_ca, &talker, 5, "talker").await;
    dev.write_all(&subscribe(5, 1, &["devices/talker/#", "fleet/notices"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut dev).await), [0x01, 0x01]);

    // Tightened: the application may read telemetry only.
    std::fs::write(d.join("certmq.toml"), config("devices/+/telemetry")).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    logs.wait_for("authorization policies reloaded").await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut rest))
        .await
        .expect("the application's session outlived the reload")
        .ok();
    assert_eq!(rest.first(), Some(&0xE0), "DISCONNECT: {rest:02x?}");
    assert_eq!(rest[2], 0x87, "not authorized");
    // The talker keeps both grants: its own namespace, and the custom
    // permission (a reload that dropped it would have closed this session).
    dev.write_all(&publish_qos1(5, 2, "devices/talker/telemetry", b"1"))
        .await
        .unwrap();
    let mut answer = read_packet(&mut dev).await;
    if answer[0] & 0xF0 == 0x30 {
        // Its own message, delivered back to it first.
        answer = read_packet(&mut dev).await;
    }
    assert_eq!(puback_reason(&answer), 0x00);

    // An invalid policy: logged, and the tightened policies stay.
    std::fs::write(
        d.join("certmq.toml"),
        config("devices/#").replace("${CommonName}", "${Nope}"),
    )
    .unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    logs.wait_for("the previous authorization policies stay in use")
        .await;
    let mut app = raw_session_at(mqtt, &server_ca, &watcher, 5, "watcher").await;
    app.write_all(&subscribe(5, 3, &["devices/#", "devices/+/telemetry"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut app).await), [0x87, 0x01]);
    drop(dev);
    sigterm_and_wait(child).await;
}

/// The serial of the certificate the server presents to a new connection.
async fn server_serial(port: u16, server_ca: &Ca, device: &Device) -> String {
    let tls = crate::support::pki::client_config(server_ca, Some(device));
    let stream = crate::support::raw::tls_connect(port, tls).await.unwrap();
    let chain = stream.get_ref().1.peer_certificates().unwrap();
    let pem = certmq::pki::der_to_pem("CERTIFICATE", chain[0].as_ref());
    serial_of(&pem).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_server_certificate_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_ca = Ca::new("ops server CA");
    let fleet = Ca::new("ops fleet CA");
    let (cert_a, key_a) = server_ca.server();
    let (cert_b, key_b) = server_ca.server();
    std::fs::write(d.join("server.pem"), &cert_a).unwrap();
    std::fs::write(d.join("server.key"), &key_a).unwrap();
    std::fs::write(d.join("fleet.pem"), &fleet.cert_pem).unwrap();
    std::fs::write(
        d.join("certmq.toml"),
        "[tls]\nserver_cert = \"server.pem\"\nserver_key = \"server.key\"\nca_files = [\"fleet.pem\"]\n\
         [[authz.attach]]\npolicies = [\"fleet-application\"]\ncommon_name = \"watcher\"\n",
    )
    .unwrap();
    let mut child = certmq(d)
        .args(["serve", "--config", "certmq.toml", "--log-format", "json"])
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut logs = Logs::follow(&mut child);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("certmq admin <Action>") {
                return;
            }
        }
    })
    .await
    .expect("certmq serve did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mqtt = listening(&mut child, &d.join("data")).await.mqtt.port();

    let (watcher, talker) = (fleet.device("watcher"), fleet.device("talker"));
    let tls = crate::support::pki::client_config(&server_ca, Some(&watcher));
    let mut session = connect_with(mqtt, tls, "watcher", Version::V5, |_| {})
        .await
        .unwrap();
    session.subscribe("devices/#").await;
    let serial = |pem: &str| serial_of(pem).to_string();
    assert_eq!(
        server_serial(mqtt, &server_ca, &talker).await,
        serial(&cert_a)
    );

    // Swap the files, SIGHUP: new handshakes get the new certificate.
    std::fs::write(d.join("server.pem"), &cert_b).unwrap();
    std::fs::write(d.join("server.key"), &key_b).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    logs.wait_for("server certificate reloaded").await;
    // The same SIGHUP re-reads the configuration's authorization policies.
    logs.wait_for("authorization policies reloaded").await;
    assert_eq!(
        server_serial(mqtt, &server_ca, &talker).await,
        serial(&cert_b)
    );
    // The session from before is still there.
    let tls = crate::support::pki::client_config(&server_ca, Some(&talker));
    let publisher = connect_with(mqtt, tls, "talker", Version::V4, |_| {})
        .await
        .unwrap();
    publisher
        .publish("devices/talker/after-reload", b"still connected", 1)
        .await;
    assert_eq!(
        session.expect_publish("devices/talker/after-reload").await,
        b"still connected"
    );

    // A panicking connection task (fault injection, compiled into the
    // test build only): that connection ends, the broker logs the panic
    // as a JSON error record and goes on serving.
    let tls = crate::support::pki::client_config(&server_ca, Some(&talker));
    let mut crasher = connect_with(mqtt, tls, "crasher", Version::V4, |_| {})
        .await
        .unwrap();
    crasher
        .publish(certmq::fault::PANIC_TOPIC, b"boom", 0)
        .await;
    crasher.expect_closed().await;
    publisher
        .publish("devices/talker/after-panic", b"still serving", 1)
        .await;
    assert_eq!(
        session.expect_publish("devices/talker/after-panic").await,
        b"still serving"
    );

    // A broken file on SIGHUP: logged, and the current certificate stays.
    std::fs::write(d.join("server.pem"), "not a certificate").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    logs.wait_for("not reloaded").await;
    assert_eq!(
        server_serial(mqtt, &server_ca, &talker).await,
        serial(&cert_b)
    );

    sigterm_and_wait(child).await;
    let logs = logs.all().await;
    assert!(logs.contains("not reloaded"), "{logs}");
    // JSON logs: every line is one JSON object with a level and a message.
    let mut count = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            record["level"].is_string() && record["fields"]["message"].is_string(),
            "{line}"
        );
        count += 1;
    }
    assert!(count >= 3, "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("fault injection")
            && l.contains("please report it")),
        "no panic record: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_problems() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        std::process::Command::new(BIN)
            .current_dir(dir.path())
            .args(["check-config", "--config", "c.toml"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let output = check("[mqtt]\nlisten = \"0.0.0.0:8883\"\n");
    assert_succeeded(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));

    let output = check("[mqtt]\nlisen = \"0.0.0.0:8883\"\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");

    let output = check(
        "[tls]\nserver_cert = \"missing.pem\"\nserver_key = \"missing.key\"\nca_files = [\"no-ca.pem\"]\n",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(stderr.contains("no-ca.pem"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

/// A component the broker cannot run without dies (here the router's
/// timer, by fault injection compiled into the test build only): the
/// process logs which, and exits non-zero so that systemd restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_non_zero_when_the_router_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _banner, listening) = serve(dir.path()).await;
    let logs = Logs::follow(&mut child);
    let pki = dir.path().join("certs/dev");
    let server_ca = Ca::from_files(&pki.join("ca.pem"), &pki.join("ca.key"));
    let device = device_from_files(&pki, "device-1", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    let client = connect_with(listening.mqtt.port(), tls, "device-1", Version::V4, |_| {})
        .await
        .unwrap();
    client
        .publish(certmq::fault::ROUTER_PANIC_TOPIC, b"boom", 0)
        .await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("certmq kept running without its router")
        .unwrap();
    let logged = logs.all().await;
    assert_eq!(status.code(), Some(1), "{logged}");
    assert!(
        logged.contains("cannot run without has stopped") && logged.contains("router's timer"),
        "{logged}"
    );
    assert!(
        logged.contains("certmq: stopped because the router's timer"),
        "{logged}"
    );
}

/// The README's demo, on the embedded defaults and the development PKI,
/// with the mosquitto clients: device telemetry reaches the application,
/// the application's command reaches one device, and a device cannot
/// command another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_runs_on_the_embedded_policies() {
    if !crate::mosquitto::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, _banner, listening) = serve(dir.path()).await;
    let port = listening.mqtt.port().to_string();
    let pki = dir.path().join("certs/dev");
    let client = |program: &str, who: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "localhost", "-p", &port, "--cafile"])
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join(format!("{who}.pem")))
            .arg("--key")
            .arg(pki.join(format!("{who}.key")))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let app = client(
        "mosquitto_sub",
        "app",
        &["-i", "app", "-t", "devices/+/telemetry", "-v", "-C", "1"],
    )
    .spawn()
    .unwrap();
    let device_1 = client(
        "mosquitto_sub",
        "device-1",
        &[
            "-i",
            "device-1",
            "-t",
            "devices/device-1/cmd",
            "-v",
            "-C",
            "1",
        ],
    )
    .spawn()
    .unwrap();
    // mosquitto_sub says nothing when its subscription is in place: publish
    // until each has its message (it exits after one).
    let deliver = async |mut sub: Child, publisher: &str, args: &[&str]| -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = sub.try_wait().unwrap() {
                assert!(status.success(), "mosquitto_sub failed: {status}");
                let mut out = String::new();
                tokio::io::AsyncReadExt::read_to_string(sub.stdout.as_mut().unwrap(), &mut out)
                    .await
                    .unwrap();
                return out;
            }
            assert!(tokio::time::Instant::now() < deadline, "no message arrived");
            // Also a device trying to command another: refused, so it never
            // shows up at device-1 ahead of the application's command.
            let _ = client(
                "mosquitto_pub",
                "device-2",
                &[
                    "-i",
                    "device-2",
                    "-t",
                    "devices/device-1/cmd",
                    "-m",
                    "hijack",
                ],
            )
            .output()
            .await
            .unwrap();
            let output = client("mosquitto_pub", publisher, args)
                .output()
                .await
                .unwrap();
            assert_succeeded(&output);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let telemetry = deliver(
        app,
        "device-2",
        &[
            "-i",
            "device-2",
            "-t",
            "devices/device-2/telemetry",
            "-m",
            "21.5",
        ],
    )
    .await;
    assert_eq!(telemetry.trim(), "devices/device-2/telemetry 21.5");
    let command = deliver(
        device_1,
        "app",
        &[
            "-i",
            "app-cmd",
            "-t",
            "devices/device-1/cmd",
            "-m",
            "reboot",
        ],
    )
    .await;
    assert_eq!(command.trim(), "devices/device-1/cmd reboot");
    sigterm_and_wait(child).await;
}

/// `authz explain` answers with the policies a running broker has in
/// force: the configured ones, the development PKI's application policies,
/// and the custom permissions in its registry (read while the broker holds
/// it open), deny winning as on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_explain_reads_a_running_brokers_custom_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (child, _banner, _listening) = serve(d).await;
    let pki = d.join("certs/dev");
    let device = device_from_files(&pki, "device-1", "ca.pem");
    let (ca_sn, device_sn) = (
        device.identity.ca_sn.to_string(),
        device.identity.device_sn.to_string(),
    );
    let explain = |cn: &str, action: &str, topic: &str| {
        let out = std::process::Command::new(BIN)
            .current_dir(d)
            .args([
                "authz",
                "explain",
                "--ca-sn",
                &ca_sn,
                "--device-sn",
                &device_sn,
            ])
            .args(["--cn", cn, action, topic])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_succeeded(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let add = |identity_type: &str, identity: &str, topic: &str, action: &str, effect: &str| {
        let (identity_type, identity, topic, action, effect) = (
            format!("--IdentityType={identity_type}"),
            format!("--Identity={identity}"),
            format!("--Topic={topic}"),
            format!("--PermitAction={action}"),
            format!("--Effect={effect}"),
        );
        async move {
            let out = certmq(d)
                .args([
                    "admin",
                    "AddCustomAuthPermission",
                    "--InstanceId=mqtt-certmq-local",
                ])
                .args([identity_type, identity, topic, action, effect])
                // As `serve` ran: the client then finds the port in
                // data/listen.json.
                .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
                .output()
                .await
                .unwrap();
            assert_succeeded(&out);
        }
    };
    let before = explain("device-1", "publish", "fleet/extra/1");
    assert!(before.contains("custom permissions: (none)"), "{before}");
    assert!(
        before.contains("denied: no allow rule covers it"),
        "{before}"
    );
    // The development PKI's application certificate has its own policies.
    let app = explain("app", "subscribe", "devices/+/telemetry");
    assert!(app.contains("allowed by policy"), "{app}");

    add("CLIENT", "device-1", "fleet/extra/#", "PUB", "ALLOW").await;
    let identity = format!("{ca_sn}:{device_sn}");
    add(
        "DEVICE",
        &identity,
        "devices/device-1/secret",
        "PUB",
        "DENY",
    )
    .await;
    let allowed = explain("device-1", "publish", "fleet/extra/1");
    assert!(
        allowed.contains(
            "allowed by policy `custom permission CLIENT device-1` rule 1 (`fleet/extra/#`)"
        ),
        "{allowed}"
    );
    assert!(
        allowed.contains("custom permissions: custom permission DEVICE"),
        "{allowed}"
    );
    // Deny wins over the configured own-namespace allow.
    let denied = explain("device-1", "publish", "devices/device-1/secret");
    assert!(
        denied.contains(&format!(
            "denied by policy `custom permission DEVICE {identity}` rule 1"
        )),
        "{denied}"
    );
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_explain_names_the_deciding_rule_and_check_config_warns_about_client_ids() {
    let dir = tempfile::tempdir().unwrap();
    let explain = |args: &[&str]| {
        std::process::Command::new(BIN)
            .current_dir(dir.path())
            .args([
                "authz",
                "explain",
                "--ca-sn",
                "2B22",
                "--device-sn",
                "5FC9",
                "--cn",
                "device-1",
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let output = explain(&["publish", "devices/device-1/telemetry"]);
    assert_succeeded(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("policies: own-namespace"), "{stdout}");
    // Nothing has run in this directory: it says what it could not read.
    assert!(
        stdout.contains("note: no registry at data/registry.db"),
        "{stdout}"
    );
    assert!(
        stdout.contains("note: no development PKI at certs/dev yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("allowed by policy `own-namespace` rule 1 (`devices/${CommonName}/#`)"),
        "{stdout}"
    );
    let output = explain(&["subscribe", "devices/+/cmd"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("denied: no allow rule covers it"));
    let output = explain(&["subscribe", "devices/#/x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("`#` must be"));

    std::fs::write(
        dir.path().join("c.toml"),
        "[authz]\ndefault_policies = [\"by-id\"]\n[[authz.policies]]\nname = \"by-id\"\n\
         rules = [{ effect = \"allow\", actions = [\"publish\"], topics = [\"clients/${ClientId}/#\"] }]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[authz]\ndefault_policies = [\"by-id\"]\n[[authz.policies]]\nname = \"by-id\"\n\
         rules = [{ effect = \"allow\", actions = [\"publish\"], topics = [\"clients/${ClientId}/#\"] }]\n",
    )
    .unwrap();
    let output = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["check-config", "--config", "c.toml"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_succeeded(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "warning: authz: a policy uses ${ClientId} while mqtt.client_id_policy = \"any\""
        ),
        "{stderr}"
    );
}
