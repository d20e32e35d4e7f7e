//! The admin API over TLS (`admin.tls_cert`, `admin.tls_key`), with client
//! certificates (`admin.tls_client_ca`), its reload, the loopback rule for
//! plain HTTP, and every client: `AdminClient`, `certmq admin`, and the
//! documented curl script.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use certmq::admin::client::{AdminClient, ClientTls};
use certmq::{Broker, Settings};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::support::{self, Ca, Device, TEST_KEY_ID, TEST_KEY_SECRET, TestBroker};

const BIN: &str = env!("CARGO_BIN_EXE_certmq");
const CURL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/acs-curl.sh");

/// The admin API's files: its certificate and key (from `server_ca`), and
/// the CA of operators' client certificates.
struct AdminPki {
    dir: TempDir,
    server_ca: Ca,
    clients_ca: Ca,
}

impl AdminPki {
    fn new() -> AdminPki {
        let pki = AdminPki {
            dir: tempfile::tempdir().unwrap(),
            server_ca: Ca::new("admin server CA"),
            clients_ca: Ca::new("admin operators CA"),
        };
        let (cert, key) = pki.server_ca.server();
        pki.write_server(&cert, &key);
        std::fs::write(pki.path("clients-ca.pem"), &pki.clients_ca.cert_pem).unwrap();
        std::fs::write(pki.path("server-ca.pem"), &pki.server_ca.cert_pem).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_server(&self, cert: &str, key: &str) {
        std::fs::write(self.path("admin.pem"), cert).unwrap();
        std::fs::write(self.path("admin.key"), key).unwrap();
    }

    /// Points `settings` at these files; `mtls` adds the client CA.
    fn configure(&self, settings: &mut Settings, mtls: bool) {
        settings.admin.tls_cert = self.path("admin.pem").display().to_string();
        settings.admin.tls_key = self.path("admin.key").display().to_string();
        if mtls {
            settings.admin.tls_client_ca = self.path("clients-ca.pem").display().to_string();
        }
    }

    /// An operator's client certificate, as files.
    fn operator(&self, ca: &Ca, name: &str) -> (Device, PathBuf, PathBuf) {
        let device = ca.device(name);
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert, &device.cert_pem).unwrap();
        std::fs::write(&key, &device.key_pem).unwrap();
        (device, cert, key)
    }
}

async fn start_tls(pki: &AdminPki, mtls: bool) -> TestBroker {
    support::start_with(&[], |s| pki.configure(s, mtls)).await
}

fn https(tb: &TestBroker) -> String {
    format!("https://127.0.0.1:{}", tb.broker.admin_addr().port())
}

fn trusting(ca: &Ca) -> ClientTls {
    ClientTls::new()
        .trust_ca_pem(ca.cert_pem.as_bytes(), "test CA")
        .unwrap()
}

async fn register_code(client: &AdminClient, tb: &TestBroker) -> Result<String, String> {
    let params = [("MqttInstanceId".to_owned(), tb.instance())];
    match client.call("GetRegisterCode", &params).await {
        Ok((200, body)) => Ok(body["RegisterCode"].as_str().unwrap().to_owned()),
        Ok((status, body)) => panic!("GetRegisterCode answered {status}: {body}"),
        Err(e) => Err(e.to_string()),
    }
}

/// Completes a TLS handshake and one HTTP request with the admin port,
/// trusting `ca` and presenting `client`; returns the certificate the
/// server presented. (With TLS 1.3 a refused client certificate shows only
/// once the client reads, hence the request.)
async fn served_cert(
    tb: &TestBroker,
    ca: &Ca,
    client: Option<&Device>,
) -> std::io::Result<CertificateDer<'static>> {
    let tls = support::pki::client_config(ca, client);
    let mut stream = support::raw::tls_connect(tb.broker.admin_addr().port(), tls).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    Ok(stream.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn have(tool: &str) -> bool {
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing: apt-get install -y {tool}"
    );
    eprintln!("skipping the {tool} part: {tool} is not installed");
    false
}

/// `docs/examples/acs-curl.sh GetRegisterCode` against `endpoint`, with
/// the script's TLS variables in `env`.
async fn curl_script(tb: &TestBroker, endpoint: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut command = Command::new(CURL_SCRIPT);
    command
        .env("ACCESS_KEY_ID", TEST_KEY_ID)
        .env("ACCESS_KEY_SECRET", TEST_KEY_SECRET)
        .env("ENDPOINT", endpoint)
        .arg("GetRegisterCode")
        .arg(format!("MqttInstanceId={}", tb.instance()));
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `certmq admin GetRegisterCode` with `args`, signed with the test key.
async fn cli(tb: &TestBroker, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("admin")
        .args(args)
        .args(["GetRegisterCode", "--MqttInstanceId", &tb.instance()])
        .env("CERTMQ_ACCESS_KEY_ID", TEST_KEY_ID)
        .env("CERTMQ_ACCESS_KEY_SECRET", TEST_KEY_SECRET)
        .env_remove("CERTMQ_ADMIN_ENDPOINT")
        .env_remove("CERTMQ_ADMIN_CA_FILE")
        .env_remove("CERTMQ_ADMIN_CLIENT_CERT")
        .env_remove("CERTMQ_ADMIN_CLIENT_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn assert_cli_ok(output: &std::process::Output, code: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(code),
        "exited with {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_cli_fails(output: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(expected),
        "expected a failure naming `{expected}`; exited with {}\nstderr: {stderr}",
        output.status
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_https_for_the_client_the_cli_and_curl() {
    let pki = AdminPki::new();
    let tb = start_tls(&pki, false).await;
    assert!(tb.broker.admin_uses_tls());
    let code = tb.broker.registration_code().to_owned();

    // A client that connects and says nothing holds up nobody.
    let silent = tokio::net::TcpStream::connect(tb.broker.admin_addr())
        .await
        .unwrap();

    // AdminClient trusting the admin API's CA, by IP and by name.
    for endpoint in [
        https(&tb),
        format!("https://localhost:{}", tb.broker.admin_addr().port()),
    ] {
        let client = AdminClient::with_tls(
            &endpoint,
            TEST_KEY_ID,
            TEST_KEY_SECRET,
            trusting(&pki.server_ca),
        )
        .unwrap();
        assert_eq!(register_code(&client, &tb).await.unwrap(), code);
    }

    // Not trusting it (the system's trust store): refused, with the remedy.
    let untrusting = AdminClient::new(&https(&tb), TEST_KEY_ID, TEST_KEY_SECRET).unwrap();
    let err = register_code(&untrusting, &tb).await.unwrap_err();
    assert!(err.contains("--ca-file"), "{err}");
    // Another CA's trust is no better.
    let stranger = Ca::new("someone else's CA");
    let wrong = AdminClient::with_tls(
        &https(&tb),
        TEST_KEY_ID,
        TEST_KEY_SECRET,
        trusting(&stranger),
    )
    .unwrap();
    assert!(register_code(&wrong, &tb).await.is_err());

    // Plain HTTP to the TLS port gets no answer, and the error says why.
    let plain = AdminClient::new(
        &format!("http://{}", tb.broker.admin_addr()),
        TEST_KEY_ID,
        TEST_KEY_SECRET,
    )
    .unwrap();
    let err = register_code(&plain, &tb).await.unwrap_err();
    assert!(err.contains("https://"), "{err}");
    // A CA for an http:// endpoint is a mistake, said at once.
    let err = AdminClient::with_tls(
        &format!("http://{}", tb.broker.admin_addr()),
        TEST_KEY_ID,
        TEST_KEY_SECRET,
        trusting(&pki.server_ca),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("https://"), "{err}");

    // certmq admin: an explicit https endpoint with --ca-file; the default
    // endpoint from a configuration with admin.tls_cert is https too.
    let work = tempfile::tempdir().unwrap();
    let ca_file = pki.path("server-ca.pem");
    let ca_arg = ca_file.to_str().unwrap();
    let output = cli(
        &tb,
        work.path(),
        &["--endpoint", &https(&tb), "--ca-file", ca_arg],
    )
    .await;
    assert_cli_ok(&output, &code);
    std::fs::write(
        work.path().join("certmq.toml"),
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            tb.broker.admin_addr().port(),
            tb.broker.settings().admin.tls_cert,
            tb.broker.settings().admin.tls_key,
        ),
    )
    .unwrap();
    let output = cli(
        &tb,
        work.path(),
        &["--config", "certmq.toml", "--ca-file", ca_arg],
    )
    .await;
    assert_cli_ok(&output, &code);
    let output = cli(&tb, work.path(), &["--config", "certmq.toml"]).await;
    assert_cli_fails(&output, "--ca-file");
    let output = cli(
        &tb,
        work.path(),
        &["--config", "certmq.toml", "--ca-file", "nope.pem"],
    )
    .await;
    assert_cli_fails(&output, "nope.pem");

    // The curl script with CA_FILE; without it curl refuses the certificate.
    if have("curl") && have("openssl") {
        let (ok, text) = curl_script(&tb, &https(&tb), &[("CA_FILE", &ca_file)]).await;
        assert!(ok && text.contains(&code), "{text}");
        let (ok, text) = curl_script(&tb, &https(&tb), &[]).await;
        assert!(!ok, "{text}");
        // The web console is served here too, over HTTPS, with its policy.
        let output = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca_arg])
            .arg(format!("{}/console/app.js", https(&tb)))
            .output()
            .await
            .unwrap();
        let headers = String::from_utf8_lossy(&output.stdout).to_lowercase();
        assert!(
            headers.starts_with("http/1.1 200")
                && headers.contains("content-security-policy: default-src 'none'")
                && headers.contains("frame-ancestors 'none'"),
            "{headers}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Graceful shutdown with a silent connection and an idle keep-alive
    // one still open.
    tokio::time::timeout(Duration::from_secs(15), tb.broker.shutdown())
        .await
        .expect("the broker did not shut down");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_client_certificates_of_its_ca() {
    let pki = AdminPki::new();
    let tb = start_tls(&pki, true).await;
    let code = tb.broker.registration_code().to_owned();
    let (operator, cert, key) = pki.operator(&pki.clients_ca, "operator");
    let stranger_ca = Ca::new("not the operators' CA");
    let (stranger, stranger_cert, stranger_key) = pki.operator(&stranger_ca, "stranger");

    // The handshake itself: refused without a certificate or with one of
    // another CA, completed with one of admin.tls_client_ca.
    assert!(served_cert(&tb, &pki.server_ca, None).await.is_err());
    assert!(
        served_cert(&tb, &pki.server_ca, Some(&stranger))
            .await
            .is_err()
    );
    served_cert(&tb, &pki.server_ca, Some(&operator))
        .await
        .unwrap();

    // AdminClient: without an identity the error names the remedy.
    let bare = AdminClient::with_tls(
        &https(&tb),
        TEST_KEY_ID,
        TEST_KEY_SECRET,
        trusting(&pki.server_ca),
    )
    .unwrap();
    let err = register_code(&bare, &tb).await.unwrap_err();
    assert!(err.contains("--client-cert"), "{err}");
    let tls = trusting(&pki.server_ca)
        .identity_pem(
            operator.cert_pem.as_bytes(),
            operator.key_pem.as_bytes(),
            "operator",
        )
        .unwrap();
    let client = AdminClient::with_tls(&https(&tb), TEST_KEY_ID, TEST_KEY_SECRET, tls).unwrap();
    assert_eq!(register_code(&client, &tb).await.unwrap(), code);
    // The certificate opens the port; the signature still decides the call.
    let tls = trusting(&pki.server_ca)
        .identity_pem(
            operator.cert_pem.as_bytes(),
            operator.key_pem.as_bytes(),
            "operator",
        )
        .unwrap();
    let unsigned =
        AdminClient::with_tls(&https(&tb), TEST_KEY_ID, "not-the-secret-000000", tls).unwrap();
    let (status, body) = unsigned
        .call(
            "GetRegisterCode",
            &[("MqttInstanceId".into(), tb.instance())],
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("SignatureDoesNotMatch"))
    );

    // certmq admin with --client-cert / --client-key.
    let work = tempfile::tempdir().unwrap();
    let ca_file = pki.path("server-ca.pem");
    let base = [
        "--endpoint",
        &https(&tb),
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]
    .map(String::from);
    let with = |extra: &[&Path]| -> Vec<String> {
        let mut args = base.to_vec();
        if let [cert, key] = extra {
            args.extend([
                "--client-cert".into(),
                cert.display().to_string(),
                "--client-key".into(),
                key.display().to_string(),
            ]);
        }
        args
    };
    let run = |args: Vec<String>| {
        let (tb, work) = (&tb, work.path());
        async move {
            cli(
                tb,
                work,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await
        }
    };
    assert_cli_ok(&run(with(&[&cert, &key])).await, &code);
    assert_cli_fails(&run(with(&[])).await, "--client-cert");
    assert_cli_fails(
        &run(with(&[&stranger_cert, &stranger_key])).await,
        "did not answer",
    );
    let mut half = with(&[]);
    half.extend(["--client-cert".into(), cert.display().to_string()]);
    assert_cli_fails(&run(half).await, "--client-key");
    let mut mismatched = with(&[]);
    mismatched.extend(
        [
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            stranger_key.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert_cli_fails(
        &run(mismatched).await,
        "is not the key of the client certificate",
    );

    // The curl script with CLIENT_CERT / CLIENT_KEY.
    if have("curl") && have("openssl") {
        let env = [
            ("CA_FILE", ca_file.as_path()),
            ("CLIENT_CERT", &cert),
            ("CLIENT_KEY", &key),
        ];
        let (ok, text) = curl_script(&tb, &https(&tb), &env).await;
        assert!(ok && text.contains(&code), "{text}");
        let (ok, text) = curl_script(&tb, &https(&tb), &env[..1]).await;
        assert!(!ok, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_new_certificates_to_new_connections_and_keeps_the_old_on_error() {
    let pki = AdminPki::new();
    let tb = start_tls(&pki, true).await;
    let (operator, _, _) = pki.operator(&pki.clients_ca, "operator");
    let first = std::fs::read_to_string(pki.path("admin.pem")).unwrap();
    assert_eq!(
        served_cert(&tb, &pki.server_ca, Some(&operator))
            .await
            .unwrap(),
        der(&first)
    );

    // A new certificate from a new CA, and a new operators' CA.
    let (new_server_ca, new_clients_ca) = (Ca::new("admin server CA 2"), Ca::new("operators CA 2"));
    let (cert, key) = new_server_ca.server();
    pki.write_server(&cert, &key);
    std::fs::write(pki.path("clients-ca.pem"), &new_clients_ca.cert_pem).unwrap();
    tb.broker.reload_admin_tls().unwrap();
    let (new_operator, _, _) = pki.operator(&new_clients_ca, "operator-2");
    assert_eq!(
        served_cert(&tb, &new_server_ca, Some(&new_operator))
            .await
            .unwrap(),
        der(&cert)
    );
    // The old server CA no longer verifies it; the old operator is out.
    assert!(
        served_cert(&tb, &pki.server_ca, Some(&new_operator))
            .await
            .is_err()
    );
    assert!(
        served_cert(&tb, &new_server_ca, Some(&operator))
            .await
            .is_err()
    );

    // Broken files: an error naming the key, and the current one stays.
    std::fs::write(pki.path("admin.pem"), "not a certificate").unwrap();
    let err = tb.broker.reload_admin_tls().unwrap_err().to_string();
    assert!(err.contains("admin.tls_cert"), "{err}");
    let (other, _) = new_server_ca.server();
    pki.write_server(&other, &key);
    let err = tb.broker.reload_admin_tls().unwrap_err().to_string();
    assert!(err.contains("admin.tls_key"), "{err}");
    assert_eq!(
        served_cert(&tb, &new_server_ca, Some(&new_operator))
            .await
            .unwrap(),
        der(&cert)
    );

    // On a plain HTTP admin API, reloading does nothing.
    let plain = support::start(&[]).await;
    assert!(!plain.broker.admin_uses_tls());
    plain.broker.reload_admin_tls().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_off_loopback_is_refused_unless_allowed() {
    // In process: the start fails before touching the data directory.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded_defaults().unwrap();
    settings.mqtt.listen = "127.0.0.1:0".into();
    settings.admin.listen = "0.0.0.0:0".into();
    settings.storage.data_dir = dir.path().join("data");
    settings.tls.dev_pki_dir = dir.path().join("pki");
    let err = Broker::start(settings.clone())
        .await
        .err()
        .expect("started with plain HTTP on 0.0.0.0")
        .to_string();
    for named in [
        "admin.listen",
        "admin.tls_cert",
        "admin.tls_key",
        "admin.allow_plaintext",
    ] {
        assert!(err.contains(named), "{err}");
    }
    assert!(!dir.path().join("data").exists());

    // With admin.allow_plaintext it starts, and answers on loopback.
    let tb = support::start_with(&[], |s| {
        s.admin.listen = "0.0.0.0:0".into();
        s.admin.allow_plaintext = true;
    })
    .await;
    assert!(tb.broker.admin_addr().ip().is_unspecified());
    let loopback = AdminClient::new(
        &format!("127.0.0.1:{}", tb.broker.admin_addr().port()),
        TEST_KEY_ID,
        TEST_KEY_SECRET,
    )
    .unwrap();
    register_code(&loopback, &tb).await.unwrap();

    // The binary: serve refuses with the same sentence, check-config too.
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(BIN);
        command
            .current_dir(work.path())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let mqtt = "127.0.0.1:0".to_owned();
    let off_loopback = [
        ("CERTMQ__ADMIN__LISTEN", "0.0.0.0:0"),
        ("CERTMQ__MQTT__LISTEN", mqtt.as_str()),
    ];
    let output = run(&["serve"], &off_loopback);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("admin.listen") && stderr.contains("admin.allow_plaintext"),
        "{stderr}"
    );
    let output = run(&["check-config"], &off_loopback);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("admin.tls_cert"),
        "{stderr}"
    );
    let allowed = [off_loopback[0], ("CERTMQ__ADMIN__ALLOW_PLAINTEXT", "true")];
    let output = run(&["check-config"], &allowed);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // check-config reads the admin TLS files, and names what is wrong.
    std::fs::write(work.path().join("not-a-ca.pem"), "nothing here").unwrap();
    let output = run(
        &["check-config"],
        &[
            ("CERTMQ__ADMIN__LISTEN", "0.0.0.0:8443"),
            ("CERTMQ__ADMIN__TLS_CERT", "missing-admin.pem"),
            ("CERTMQ__ADMIN__TLS_KEY", "missing-admin.key"),
            ("CERTMQ__ADMIN__TLS_CLIENT_CA", "not-a-ca.pem"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for named in [
        "admin.tls_cert",
        "missing-admin.pem",
        "admin.tls_client_ca",
        "not-a-ca.pem",
        "2 problem(s)",
    ] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    let output = run(
        &["check-config"],
        &[("CERTMQ__ADMIN__TLS_KEY", "admin.key")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("admin.tls_cert"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_admin_certificate_of_certmq_serve() {
    let pki = AdminPki::new();
    let work = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded_defaults().unwrap();
    pki.configure(&mut settings, false);
    std::fs::write(
        work.path().join("certmq.toml"),
        format!(
            "[mqtt]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            settings.admin.tls_cert, settings.admin.tls_key
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .current_dir(work.path())
        .args(["serve", "--config", "certmq.toml"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let pid = child.id().unwrap();
    let admin =
        support::wait_listening(&work.path().join("data"), pid, || child.try_wait().unwrap())
            .unwrap_or_else(|status| panic!("certmq serve exited with {status}"))
            .admin
            .port();
    let first = der(&std::fs::read_to_string(pki.path("admin.pem")).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while served_on(admin, &pki.server_ca).await.as_ref() != Some(&first) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin port never served TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (cert, key) = pki.server_ca.server();
    pki.write_server(&cert, &key);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served_on(admin, &pki.server_ca).await != Some(der(&cert)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new admin certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("certmq did not stop on SIGTERM")
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    assert!(logs.contains("admin API certificate reloaded"), "{logs}");
}

/// The certificate the TLS port `port` presents, once it answers at all.
async fn served_on(port: u16, trust: &Ca) -> Option<CertificateDer<'static>> {
    let tls = support::pki::client_config(trust, None);
    let stream = support::raw::tls_connect(port, tls).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].clone())
}
