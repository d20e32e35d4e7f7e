//! The `certmq` command line: `serve` runs the broker, `pki` makes
//! certificates. `anyhow` lives here, at the edge, and nowhere else.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them), see docs/BENCHMARKS.md:
/// - `retain:false`: address space the broker no longer uses is unmapped,
///   not kept for reuse, so that what a burst of sessions made the broker
///   map goes back when they have gone (VmData after 20,000 devices
///   churned: +3.0 MB instead of +6.4 MB);
/// - `dirty_decay_ms:1000`: freed pages go back to the system within about
///   a second instead of ten. jemalloc purges only while it is being used,
///   and a broker goes quiet after a burst: with ten seconds, what 15,000
///   parked persistent sessions held stayed resident after they expired
///   (+12.8 MB); with one, +2.6 to +6.2 MB;
/// - `background_thread:true`: that purging runs on jemalloc's own thread,
///   so it also happens while the broker is quiet (after a burst of
///   persistent sessions expired: +2.9 to +3.5 MB in 7 runs, against +3.5
///   to +4.4 MB without it, alternating, the same day).
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8; 56] = b"retain:false,dirty_decay_ms:1000,background_thread:true\0";

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use certmq::config::{LogFormat, Settings, StorageBackend};
use certmq::pki::{self, CaSigner, KeyKind};
use certmq::{Broker, pki::dev::DevPki};

#[derive(Parser)]
#[command(
    name = "certmq",
    version,
    about = "An MQTT broker that enforces the lifecycle of device certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: MQTT over mutual TLS, and the admin API.
    ///
    /// With no server certificate configured, the first start generates a
    /// development PKI under `certs/dev` (CA, server and device
    /// certificates) and registers its CA; later starts reuse it.
    ///
    /// SIGHUP re-reads the server certificate and key, and the admin API's
    /// (admin.tls_cert, admin.tls_key, admin.tls_client_ca): new handshakes
    /// use them, live sessions stay. SIGINT and SIGTERM stop it gracefully.
    Serve {
        /// A TOML file overriding the embedded defaults (see config/default.toml).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Log format, overriding log.format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Check a configuration (keys, values, the files it names, the data
    /// directory) without starting; exits non-zero listing the problems.
    CheckConfig {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Make certificates: CAs, device certificates, server certificates, and
    /// the verification certificate of CA registration.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Call the admin API, signed (ACS3-HMAC-SHA256), and print the answer.
    ///
    /// Example: certmq admin InactivateDeviceCertificate --MqttInstanceId
    /// mqtt-certmq-local --CaSn 2B22... --DeviceSn 5FC9...
    ///
    /// The endpoint and access key come from the flags, the environment, or
    /// else the configuration: its admin.listen (https:// when admin.tls_cert
    /// is set; with port 0, the address in the data directory's listen.json)
    /// and access keys, or the key that `certmq serve` generated in the data
    /// directory.
    Admin(AdminArgs),
    /// Back up or restore the certificate registry (JSON lines).
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Topic authorization: which policies apply to a certificate, and
    /// which rule decides.
    #[command(subcommand)]
    Authz(AuthzCommand),
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Says whether a device may publish to a topic or subscribe to a
    /// filter under the configured policies, and which rule decides.
    ///
    /// Example: certmq authz explain --ca-sn 2B22... --device-sn 5FC9...
    /// --cn device-1 publish devices/device-2/cmd
    Explain {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        #[arg(long)]
        ca_sn: String,
        #[arg(long)]
        device_sn: String,
        /// The certificate's subject CN.
        #[arg(long)]
        cn: String,
        /// The MQTT client id (default: the CN).
        #[arg(long)]
        client_id: Option<String>,
        /// The certificate's subject O and OU.
        #[arg(long, default_value = "")]
        subject_o: String,
        #[arg(long, default_value = "")]
        subject_ou: String,
        #[arg(value_enum)]
        action: ExplainAction,
        /// A topic name (publish) or topic filter (subscribe).
        topic: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExplainAction {
    Publish,
    Subscribe,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Write the registry (instance, CAs, device certificates, custom
    /// permissions) as JSON lines, from SQLite or PostgreSQL. Safe while
    /// brokers run: it reads a consistent snapshot.
    Export {
        /// The broker's configuration file (for storage.data_dir).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Where to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read a backup into the registry (SQLite or PostgreSQL), all or
    /// nothing; records that exist are updated. The brokers must be
    /// stopped.
    Import {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The backup (JSON lines, as written by export).
        file: PathBuf,
    },
    /// Import a CRL (PEM or DER) through the running broker's admin API
    /// (ImportCrl): every serial it lists becomes inactive, sessions closed
    /// before it answers, never-seen serials blocked. Finds the endpoint
    /// and access key as `certmq admin` does (CERTMQ_ADMIN_ENDPOINT,
    /// CERTMQ_ACCESS_KEY_ID / _SECRET, or the configuration).
    ImportCrl {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The CRL file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// The admin API, e.g. http://127.0.0.1:8080 or https://admin.example.com:8080
    /// (default: from admin.listen, https:// when admin.tls_cert is set).
    #[arg(long, env = "CERTMQ_ADMIN_ENDPOINT")]
    endpoint: Option<String>,
    /// HTTPS: trust the CA certificates in this PEM file for the admin API's
    /// certificate, instead of the system's trust store.
    #[arg(long, env = "CERTMQ_ADMIN_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// HTTPS with client certificates (admin.tls_client_ca): present this
    /// certificate chain (PEM, leaf first). Needs --client-key.
    #[arg(long, env = "CERTMQ_ADMIN_CLIENT_CERT", value_name = "PATH")]
    client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, env = "CERTMQ_ADMIN_CLIENT_KEY", value_name = "PATH")]
    client_key: Option<PathBuf>,
    #[arg(long, env = "CERTMQ_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    #[arg(long, env = "CERTMQ_ACCESS_KEY_SECRET", hide_env_values = true)]
    access_key_secret: Option<String>,
    /// The broker's configuration file, to find the endpoint and the key.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The operation, e.g. GetRegisterCode, InactivateDeviceCertificate.
    action: String,
    /// Its parameters: --Name value (or --Name=value), e.g. --DeviceSn 5FC9...
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "--Name value"
    )]
    params: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a self-signed CA that issues device certificates. Register it
    /// with the broker through `tls.ca_files` or the admin API.
    CreateCa {
        /// Subject common name of the CA.
        #[arg(long)]
        cn: String,
        #[command(flatten)]
        out: Output,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        #[arg(long, value_enum, default_value_t)]
        key: KeyKind,
    },
    /// Issue a device certificate (clientAuth) from a CA. The device is
    /// registered on its first connection; its DeviceName is the CN.
    IssueDevice {
        #[command(flatten)]
        ca: CaFiles,
        /// Subject common name: the device's name.
        #[arg(long)]
        cn: String,
        #[command(flatten)]
        out: Output,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long, value_enum, default_value_t)]
        key: KeyKind,
    },
    /// Issue a server certificate (serverAuth) for the broker's names.
    IssueServer {
        #[command(flatten)]
        ca: CaFiles,
        /// DNS names and IP addresses, e.g. --name mqtt.example.com --name 10.0.0.5
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        out: Output,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long, value_enum, default_value_t)]
        key: KeyKind,
    },
    /// Create the verification certificate that RegisterCaCertificate asks
    /// for: signed by the CA's key, with the registration code (from
    /// GetRegisterCode) as subject CN. It proves you hold the CA's key.
    VerificationCert {
        #[command(flatten)]
        ca: CaFiles,
        /// The instance's registration code.
        #[arg(long)]
        code: String,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Args)]
struct CaFiles {
    /// The issuing CA's certificate (PEM).
    #[arg(long, value_name = "PATH")]
    ca_cert: PathBuf,
    /// The issuing CA's private key (PEM, PKCS#8).
    #[arg(long, value_name = "PATH")]
    ca_key: PathBuf,
}

#[derive(Args)]
struct Output {
    /// Where to write the certificate (PEM).
    #[arg(long, value_name = "PATH")]
    out_cert: PathBuf,
    /// Where to write the private key (PEM, mode 0600).
    #[arg(long, value_name = "PATH")]
    out_key: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => serve(config.as_deref(), log_format),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Pki(cmd) => run_pki(cmd),
        Command::Admin(args) => admin(args),
        Command::Registry(cmd) => registry(cmd),
        Command::Authz(cmd) => authz(cmd),
    };
    if let Err(e) = result {
        // The whole chain of causes, on one line, without a backtrace.
        eprintln!("certmq: {e:#}");
        std::process::exit(1);
    }
}

fn admin(args: AdminArgs) -> Result<()> {
    let params = admin_params(&args.params)?;
    let settings = Settings::load(args.config.as_deref())?;
    let endpoint = match args.endpoint {
        Some(e) => e,
        None => {
            let mut listen = settings.admin_listen()?;
            if listen.port() == 0 {
                // Any free port: the broker says which in listen.json.
                let dir = &settings.storage.data_dir;
                listen = certmq::instance::Listening::read(dir)
                    .with_context(|| {
                        format!(
                            "admin.listen has port 0 and {} cannot be read (is `certmq serve` running here?)",
                            dir.join(certmq::instance::LISTEN_FILE).display()
                        )
                    })?
                    .admin;
            }
            let host = if listen.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                listen.ip()
            };
            format!(
                "{}://{}",
                admin_scheme(&settings),
                std::net::SocketAddr::new(host, listen.port())
            )
        }
    };
    let mut tls = certmq::admin::client::ClientTls::new();
    if let Some(path) = &args.ca_file {
        tls = tls.trust_ca_file(path).context("--ca-file")?;
    }
    match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => {
            tls = tls
                .identity_files(cert, key)
                .context("--client-cert / --client-key")?;
        }
        (None, None) => {}
        _ => anyhow::bail!("give both --client-cert and --client-key (or neither)"),
    }
    let (id, secret) = match (args.access_key_id, args.access_key_secret) {
        (Some(id), Some(secret)) => (id, secret),
        (None, None) => {
            let key = settings
                .admin
                .access_keys
                .first()
                .cloned()
                .or_else(|| certmq::admin::keys::read_generated(&settings))
                .with_context(|| {
                    format!(
                        "no access key: set CERTMQ_ACCESS_KEY_ID and CERTMQ_ACCESS_KEY_SECRET, or run where `certmq serve` \
                         generated {}",
                        settings.storage.data_dir.join(certmq::admin::keys::GENERATED_KEY_FILE).display()
                    )
                })?;
            (key.id, key.secret)
        }
        _ => anyhow::bail!("give both --access-key-id and --access-key-secret (or neither)"),
    };
    let client = certmq::admin::client::AdminClient::with_tls(&endpoint, &id, &secret, tls)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, body) = runtime.block_on(client.call(&args.action, &params))?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if status >= 400 {
        std::process::exit(1);
    }
    Ok(())
}

/// The admin API's URL scheme under `settings`.
fn admin_scheme(settings: &Settings) -> &'static str {
    if settings.admin.tls_cert.is_empty() {
        "http"
    } else {
        "https"
    }
}

/// A small runtime for the PostgreSQL store's export and import.
fn pg_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `certmq registry export/import`: the same JSON lines from and to either
/// store, so that a SQLite registry moves to PostgreSQL by export + import.
fn registry(cmd: RegistryCommand) -> Result<()> {
    use certmq::config::StorageBackend;
    use certmq::store::{backup, postgres_backup, sqlite};
    match cmd {
        RegistryCommand::ImportCrl { config, file } => {
            let raw =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // The API takes PEM: a DER CRL is wrapped.
            let content = match std::str::from_utf8(&raw) {
                Ok(text) if text.trim_start().starts_with("-----BEGIN") => text.to_owned(),
                _ => pem::encode(&pem::Pem::new("X509 CRL", raw)),
            };
            let settings = Settings::load(config.as_deref())?;
            let env = |name: &str| std::env::var(name).ok();
            return admin(AdminArgs {
                endpoint: env("CERTMQ_ADMIN_ENDPOINT"),
                ca_file: env("CERTMQ_ADMIN_CA_FILE").map(PathBuf::from),
                client_cert: env("CERTMQ_ADMIN_CLIENT_CERT").map(PathBuf::from),
                client_key: env("CERTMQ_ADMIN_CLIENT_KEY").map(PathBuf::from),
                access_key_id: env("CERTMQ_ACCESS_KEY_ID"),
                access_key_secret: env("CERTMQ_ACCESS_KEY_SECRET"),
                config,
                action: "ImportCrl".into(),
                params: vec![
                    "--MqttInstanceId".into(),
                    settings.instance.id,
                    "--CrlContent".into(),
                    content,
                ],
            });
        }
        RegistryCommand::Export { config, output } => {
            let settings = Settings::load(config.as_deref())?;
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let (lines, from) = match settings.storage.backend {
                StorageBackend::Sqlite => {
                    let db = settings.storage.data_dir.join(sqlite::FILE_NAME);
                    (backup::export(&db, &mut out)?, db.display().to_string())
                }
                StorageBackend::Postgres => {
                    let url = &settings.storage.postgres_url;
                    let lines = pg_runtime()?.block_on(postgres_backup::export(url, &mut out))?;
                    (lines, location(url))
                }
            };
            eprintln!("exported {lines} records from {from}");
        }
        RegistryCommand::Import { config, file } => {
            let settings = Settings::load(config.as_deref())?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut input = std::io::BufReader::new(input);
            let (imported, into) = match settings.storage.backend {
                StorageBackend::Sqlite => {
                    let data_dir = certmq::instance::DataDir::lock(&settings.storage.data_dir)?;
                    let db = data_dir.registry_db();
                    (backup::import(&db, &mut input)?, db.display().to_string())
                }
                StorageBackend::Postgres => {
                    let url = &settings.storage.postgres_url;
                    let imported =
                        pg_runtime()?.block_on(postgres_backup::import(url, &mut input))?;
                    (imported, location(url))
                }
            };
            eprintln!(
                "imported {} CAs, {} device certificates and {} custom permissions into {into}",
                imported.cas, imported.devices, imported.permissions,
            );
        }
    }
    Ok(())
}

/// Where a PostgreSQL URL points, without its password.
fn location(url: &str) -> String {
    certmq::store::postgres::config(url)
        .map(|c| certmq::store::postgres::describe(&c))
        .unwrap_or_else(|_| "storage.postgres_url".into())
}

/// `--Name value` and `--Name=value` pairs.
fn admin_params(raw: &[String]) -> Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut iter = raw.iter();
    while let Some(arg) = iter.next() {
        let name = arg
            .strip_prefix("--")
            .with_context(|| format!("`{arg}`: parameters are given as --Name value"))?;
        match name.split_once('=') {
            Some((name, value)) => params.push((name.to_owned(), value.to_owned())),
            None => {
                let value = iter
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                params.push((name.to_owned(), value.clone()));
            }
        }
    }
    Ok(params)
}

fn authz(cmd: AuthzCommand) -> Result<()> {
    let AuthzCommand::Explain {
        config,
        ca_sn,
        device_sn,
        cn,
        client_id,
        subject_o,
        subject_ou,
        action,
        topic,
    } = cmd;
    let settings = Settings::load(config.as_deref())?;
    // The arguments first: a typo is reported before the registry is read.
    let identity = certmq::DeviceIdentity {
        ca_sn: certmq::CaSn::parse(&ca_sn).context("--ca-sn")?,
        device_sn: certmq::DeviceSn::parse(&device_sn).context("--device-sn")?,
    };
    let filter = match action {
        ExplainAction::Publish => None,
        ExplainAction::Subscribe => {
            Some(certmq::authz::Filter::parse(&topic).context("the topic filter")?)
        }
    };
    let (set, read_from) = policies_in_force(&settings)?;
    for line in read_from {
        println!("{line}");
    }
    let who = certmq::authz::Principal {
        client_id: client_id.unwrap_or_else(|| cn.clone()),
        common_name: cn,
        device_sn: identity.device_sn.to_string(),
        ca_sn: identity.ca_sn.to_string(),
        subject_o,
        subject_ou,
    };
    println!(
        "policies: {}",
        names(&set.policies_for(&identity, &who.common_name))
    );
    println!(
        "custom permissions: {}",
        names(&set.custom().policies_for(&identity, &who.client_id))
    );
    let grants = set.grants(&identity, &who);
    let decision = match &filter {
        None => grants.publish(&topic),
        Some(filter) => grants.subscribe(filter),
    };
    match decision {
        certmq::authz::Decision::Allow(rule) => println!("allowed by {rule}"),
        certmq::authz::Decision::Deny(Some(rule)) => println!("denied by {rule}"),
        certmq::authz::Decision::Deny(None) => println!("denied: no allow rule covers it"),
    }
    Ok(())
}

/// Policy names for `authz explain`, or `(none)`.
fn names(policies: &[&certmq::authz::Policy]) -> String {
    if policies.is_empty() {
        return "(none)".to_owned();
    }
    let names: Vec<&str> = policies.iter().map(|p| &*p.name).collect();
    names.join(", ")
}

/// The policies a broker started with `settings` would put in force: the
/// configured ones, the development PKI's application policies when the
/// broker would run on it, and the custom permissions stored in its
/// registry (read-only: a running broker may hold the registry open); and
/// lines that say where they were read, or why some were not.
fn policies_in_force(settings: &Settings) -> Result<(certmq::authz::PolicySet, Vec<String>)> {
    let mut said = Vec::new();
    let mut set = certmq::authz::PolicySet::from_settings(&settings.authz)?;
    if settings.tls.server_cert.is_empty() && !settings.authz.dev_pki_app_policies.is_empty() {
        let ca = DevPki::ca_cert_in(&settings.tls.dev_pki_dir);
        if ca.exists() {
            set.attach_dev_pki_app(&settings.authz, &ca, certmq::pki::dev::DEV_APP_NAME)?;
        } else {
            said.push(format!(
                "note: no development PKI at {} yet (the broker makes it at its first start): \
                 authz.dev_pki_app_policies left out",
                settings.tls.dev_pki_dir.display()
            ));
        }
    }
    let records = match settings.storage.backend {
        StorageBackend::Sqlite => {
            let db = settings
                .storage
                .data_dir
                .join(certmq::store::sqlite::FILE_NAME);
            let read = certmq::store::sqlite::read_permissions(&db).with_context(|| {
                format!(
                    "cannot read the custom permissions stored in {} (run this as the broker's \
                     user, or with read access to storage.data_dir)",
                    db.display()
                )
            })?;
            match read {
                Some(records) => {
                    said.push(format!("custom permissions read from {}", db.display()));
                    records
                }
                None => {
                    said.push(format!(
                        "note: no registry at {} (storage.data_dir, from this directory): \
                         no custom permissions read",
                        db.display()
                    ));
                    Vec::new()
                }
            }
        }
        StorageBackend::Postgres => {
            let records = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(certmq::store::postgres::read_permissions(
                    &settings.storage.postgres_url,
                ))
                .context(
                    "cannot read the custom permissions stored in storage.postgres_url (is the \
                     database reachable, and the URL the broker's?)",
                )?;
            said.push("custom permissions read from storage.postgres_url".to_owned());
            records
        }
    };
    let custom = certmq::authz::CustomPermissions::from_records(records)
        .context("a stored custom permission is unusable")?;
    Ok((set.with_custom(custom), said))
}

fn check_config(config: Option<&Path>) -> Result<()> {
    let settings = Settings::load(config)?;
    for warning in certmq::check::warnings(&settings) {
        eprintln!("warning: {warning}");
    }
    let mut problems = certmq::check::check(&settings);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    problems.extend(runtime.block_on(certmq::check::check_store(&settings)));
    if problems.is_empty() {
        println!("configuration OK");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    anyhow::bail!("{} problem(s) in the configuration", problems.len())
}

fn serve(config: Option<&Path>, log_format: Option<LogFormatArg>) -> Result<()> {
    let mut settings = Settings::load(config)?;
    match log_format {
        Some(LogFormatArg::Text) => settings.log.format = LogFormat::Text,
        Some(LogFormatArg::Json) => settings.log.format = LogFormat::Json,
        None => {}
    }
    init_logging(&settings)?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Listen for signals before anything else, so that a stop request
        // that arrives early is not lost (or fatal).
        let stop = stop_signal()?;
        let broker = Broker::start(settings).await?;
        if let Some(dev) = broker.dev_pki() {
            print_dev_instructions(dev, &broker);
        }
        if let Some(file) = broker.generated_key_file() {
            say(format_args!(
                "Admin API access key (generated for account `{}`, all actions): {}\n\
                 `certmq admin <Action> --Param value` uses it when run from this directory.",
                broker.settings().instance.owner,
                file.display()
            ));
        }
        let mut stop = std::pin::pin!(stop);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let failure = loop {
            tokio::select! {
                _ = &mut stop => break None,
                why = broker.failed() => break Some(why),
                _ = hangup.recv() => {
                    if let Err(e) = broker.reload_server_cert() {
                        tracing::error!(error = %e, "server certificate not reloaded; the previous one stays in use");
                    }
                    if let Err(e) = broker.reload_admin_tls() {
                        tracing::error!(error = %e, "admin API certificate not reloaded; the previous configuration stays in use");
                    }
                    match Settings::load(config) {
                        Ok(reloaded) => {
                            if let Err(e) = broker.reload_authz(&reloaded.authz) {
                                tracing::error!(error = %e, "authorization policies not reloaded; the previous ones stay in use");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "configuration not re-read; the previous authorization policies stay in use"),
                    }
                }
            }
        };
        tracing::info!("shutting down");
        broker.shutdown().await;
        match failure {
            // Non-zero, so that systemd (Restart=on-failure) starts it again.
            Some(why) => anyhow::bail!("stopped because {why}"),
            None => Ok(()),
        }
    })
}

fn init_logging(settings: &Settings) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(v).context("RUST_LOG is not a valid log filter")?
        }
        _ => EnvFilter::try_new(&settings.log.level).with_context(|| {
            format!(
                "configuration key `log.level`: `{}` is not a valid log filter",
                settings.log.level
            )
        })?,
    };
    // Logs go to stderr; stdout carries what the operator asked for.
    // Colours only on a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    log_panics();
    Ok(())
}

/// A panic in a connection task ends that connection only (tokio catches
/// it, and the session's guards free its router slot and table entries);
/// it is logged as an error, in the log's format, so that it is seen.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = %what, %location, thread, %backtrace, "panic (a bug in certmq: please report it)");
        } else {
            tracing::error!(panic = %what, %location, thread, "panic (a bug in certmq: please report it; RUST_BACKTRACE=1 adds a backtrace)");
        }
    }));
}

/// Raises the soft limit on open files to the hard limit: every connection
/// is a file descriptor.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Prints to stdout, ignoring a closed stdout: a broker must not stop (or
/// panic) because whoever started it stopped reading.
fn say(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed at once.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn print_dev_instructions(dev: &DevPki, broker: &Broker) {
    let port = broker.mqtt_addr().port();
    let admin = broker.admin_addr();
    let instance = &broker.settings().instance.id;
    let dir = dev.dir.display();
    let (_, cert1, key1) = &dev.devices[0];
    let (cert1, key1) = (cert1.display(), key1.display());
    let (app_cert, app_key) = (dev.app.0.display(), dev.app.1.display());
    say(format_args!(
        r#"
==================== certmq: DEVELOPMENT PKI ====================
Running on a development PKI in {dir} (not for production).
Each device may use only its own namespace, devices/<its CN>/...; the
application certificate (CN app) reaches every device's.

The application watches the fleet's telemetry:
  mosquitto_sub -h localhost -p {port} --cafile {dir}/ca.pem \
    --cert {app_cert} --key {app_key} -i app -t 'devices/+/telemetry' -v
device-1 publishes its telemetry:
  mosquitto_pub -h localhost -p {port} --cafile {dir}/ca.pem \
    --cert {cert1} --key {key1} -i device-1 -t devices/device-1/telemetry -m 21.5
The application sends device-1 a command (device-1 subscribes to
devices/device-1/cmd to receive it):
  mosquitto_pub -h localhost -p {port} --cafile {dir}/ca.pem \
    --cert {app_cert} --key {app_key} -i app-cmd -t devices/device-1/cmd -m reboot

Inactivate device-1 through the admin API (signed with the access key
printed below):
  CA_SN=$(openssl x509 -noout -serial -in {dir}/ca.pem | cut -d= -f2)
  DEVICE_SN=$(openssl x509 -noout -serial -in {cert1} | cut -d= -f2)
  certmq admin InactivateDeviceCertificate --MqttInstanceId {instance} \
    --CaSn $CA_SN --DeviceSn $DEVICE_SN
  (admin API: http://{admin}/)
=================================================================
"#
    ));
}

fn run_pki(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::CreateCa { cn, out, days, key } => {
            let issued = pki::create_ca(&cn, days, key)?;
            issued.write(&out.out_cert, &out.out_key)?;
            println!(
                "CA written to {} (key {})",
                out.out_cert.display(),
                out.out_key.display()
            );
        }
        PkiCommand::IssueDevice {
            ca,
            cn,
            out,
            days,
            key,
        } => {
            let signer = CaSigner::load(&ca.ca_cert, &ca.ca_key)?;
            signer
                .issue_device(&cn, days, key)?
                .write(&out.out_cert, &out.out_key)?;
            println!(
                "device certificate written to {} (key {})",
                out.out_cert.display(),
                out.out_key.display()
            );
        }
        PkiCommand::IssueServer {
            ca,
            names,
            out,
            days,
            key,
        } => {
            let signer = CaSigner::load(&ca.ca_cert, &ca.ca_key)?;
            signer
                .issue_server(&names, days, key)?
                .write(&out.out_cert, &out.out_key)?;
            println!(
                "server certificate written to {} (key {})",
                out.out_cert.display(),
                out.out_key.display()
            );
        }
        PkiCommand::VerificationCert { ca, code, out } => {
            let signer = CaSigner::load(&ca.ca_cert, &ca.ca_key)?;
            signer
                .issue_verification(&code, KeyKind::P256)?
                .write(&out.out_cert, &out.out_key)?;
            println!(
                "verification certificate written to {}",
                out.out_cert.display()
            );
        }
    }
    Ok(())
}
