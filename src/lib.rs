//! certmq: a self-hosted MQTT broker that enforces the lifecycle of device
//! certificates.
//!
//! Devices connect over mutual TLS with X.509 certificates issued by CAs an
//! operator registered. An operator who inactivates a device certificate
//! (InactivateDeviceCertificate, in the ApsaraMQ for MQTT API dialect) gets
//! the answer only once that certificate has no live session left and no
//! handshake with it can succeed.
//!
//! # Layout
//!
//! The path of a connection, in the order it happens:
//! - [`listener`]: accepts TCP, one task per connection, bounded count;
//! - [`tls`]: the rustls configuration and the registry-backed verifier;
//! - [`identity`]: [`DeviceIdentity`] `(CaSn, DeviceSn)`, read from the certificate;
//! - [`admission`]: after the handshake, enters the session table and
//!   re-checks the registry (the step that makes revocation exact);
//! - [`session`]: the per-connection MQTT loop, and the [`SessionTable`]
//!   of live connections with their kill handles;
//! - [`authz`]: topic authorization, the policies that decide what a
//!   session's SUBSCRIBE and PUBLISH may reach;
//! - [`router`]: certmq's router: subscriptions, retained messages,
//!   sessions (with their expiry and delayed wills) and their mailboxes.
//!
//! The path of an admin call: [`admin`] (HTTP, RPC dialect) -> [`registry`]
//! change -> [`SessionTable`] drop -> answer.
//!
//! Around them: [`config`] (settings), [`serial`] (serial numbers),
//! [`record`] (certificate records the registry keeps and the store
//! persists), [`pki`] (certificates for operators and the development PKI),
//! [`health`] (the components the broker cannot run without, for
//! `/readyz` and a non-zero exit), [`instance`] (the data directory and
//! its `listen.json`).

pub mod admin;
mod admission;
pub mod authz;
pub mod check;
pub mod cluster;
pub mod config;
pub mod crl;
pub mod events;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fuzzing;
mod glob;
pub mod health;
pub mod identity;
pub mod instance;
mod listener;
mod log_limit;
pub mod metrics;
pub mod pki;
pub mod proxy;
pub mod record;
pub mod registry;
pub mod router;
pub mod serial;
pub mod session;
pub mod store;
pub mod tls;
pub mod topic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::UnixTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Settings;
pub use identity::DeviceIdentity;
pub use metrics::Metrics;
pub use registry::{CertStatus, Registry};
pub use serial::{CaSn, DeviceSn};
pub use session::SessionTable;

use instance::{DataDir, Instance};
use pki::dev::DevPki;
use registry::{CaCert, CaRegistration, RegistryError};
use session::DropReason;
use store::sqlite::SqliteStore;
use tls::TlsContext;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("development PKI: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("tls.ca_files: {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    AccessKeys(#[from] admin::keys::KeyError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    AdminTls(#[from] admin::tls::AdminTlsError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every part of a running broker shares.
pub(crate) struct Context {
    pub(crate) settings: Settings,
    pub(crate) instance: Instance,
    pub(crate) registry: Registry,
    pub(crate) sessions: SessionTable,
    /// The router: sessions by client id, subscriptions, retained
    /// messages, mailboxes.
    pub(crate) hub: router::Hub,
    pub(crate) tls: TlsContext,
    pub(crate) metrics: Metrics,
    /// Topic authorization: the configured policies and attachments and
    /// the custom permissions; a change reaches every session.
    pub(crate) authz: Arc<authz::LivePolicies>,
    /// Set while this node may not admit connections (a node of a shared
    /// registry without its lease, or not caught up).
    pub(crate) fence: cluster::Fence,
    /// This node's name (`cluster.node_id`, or the host name).
    pub(crate) node_id: Arc<str>,
    /// The other brokers on a shared registry (PostgreSQL), for the
    /// session operations that look at every node.
    pub(crate) cluster: Option<cluster::Cluster>,
    /// Whether a component the broker cannot run without has stopped.
    pub(crate) health: health::Health,
    /// Refused handshakes are logged at most this often.
    pub(crate) refusal_log: Arc<log_limit::LogLimiter>,
    /// Lifecycle events (`$certmq/events/...`).
    pub(crate) events: events::Events,
    /// The `[[tls.crl]]` sources with `fail_closed` that are failing.
    pub(crate) crl_health: crl::refresh::CrlHealth,
}

impl Context {
    /// What a CRL import needs of the broker.
    pub(crate) fn revoker(&self) -> crl::import::Revoker {
        crl::import::Revoker {
            registry: self.registry.clone(),
            sessions: self.sessions.clone(),
            hub: self.hub.clone(),
            events: self.events.clone(),
            drop_timeout: self.settings.drop_timeout(),
        }
    }
}

/// A running broker.
pub struct Broker {
    ctx: Arc<Context>,
    mqtt_addr: SocketAddr,
    admin_addr: SocketAddr,
    dev_pki: Option<DevPki>,
    generated_key_file: Option<PathBuf>,
    /// The server certificate and key files, re-read by
    /// [`Broker::reload_server_cert`].
    server_cert: (PathBuf, PathBuf),
    /// The admin API's TLS configuration (none: plain HTTP), re-read by
    /// [`Broker::reload_admin_tls`].
    admin_tls: Option<Arc<admin::tls::AdminTls>>,
    /// Held for the broker's lifetime: one broker per data directory. Its
    /// `listen.json` goes when it drops.
    _data_dir: DataDir,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Starts the listeners and the router. Returns once both listeners are
    /// bound and `<storage.data_dir>/listen.json` names their addresses.
    pub async fn start(settings: Settings) -> Result<Broker, StartError> {
        settings.validate()?;
        #[cfg(feature = "fault-injection")]
        warn!("this is a TEST BUILD with fault injection compiled in: never deploy it");
        let mut data_dir = DataDir::lock(&settings.storage.data_dir)?;
        let node_id = settings.node_id();
        let store: Arc<dyn store::Store> = match settings.storage.backend {
            config::StorageBackend::Sqlite => Arc::new(
                SqliteStore::open(
                    &data_dir.registry_db(),
                    settings.storage.max_size_mb * 1024 * 1024,
                )
                .map_err(RegistryError::from)?,
            ),
            config::StorageBackend::Postgres => Arc::new(
                store::postgres::PgStore::connect(&settings.storage.postgres_url, &node_id)
                    .await
                    .map_err(RegistryError::from)?,
            ),
        };
        let (registry, registration_code) = Registry::open(store.clone())?;
        let custom_permissions = authz::CustomPermissions::from_records(
            store.permissions().await.map_err(RegistryError::from)?,
        )
        .map_err(|e| {
            RegistryError::from(store::StoreError::Read(format!(
                "a stored custom permission is unusable: {e}"
            )))
        })?;
        info!(
            store = %registry.location(),
            cas = registry.ca_count(),
            devices = registry.device_count(),
            "registry loaded"
        );
        let instance = Instance::new(&settings, registration_code);
        let keys = admin::keys::load(&settings)?;
        let admin_api = admin::AdminApi::new(&settings, keys.keys, &settings.storage.data_dir)?;
        let audit = admin_api.audit();
        let admin_tls = admin::tls::AdminTls::from_settings(&settings.admin)?.map(Arc::new);
        if let Some(path) = &keys.generated_file {
            info!(file = %path.display(), "admin API access key (generated for instance.owner)");
        }
        let (server_cert, server_key, mut ca_files, dev_pki) = resolve_pki(&settings)?;
        let mut authz = authz::PolicySet::from_settings(&settings.authz)
            .map_err(|e| config::invalid(e.place, e.problem))?;
        if let Some(dev) = &dev_pki {
            authz
                .attach_dev_pki_app(&settings.authz, &dev.ca_cert, pki::dev::DEV_APP_NAME)
                .map_err(|e| config::invalid(e.place, e.problem))?;
        }
        let authz = Arc::new(authz::LivePolicies::new(
            authz,
            custom_permissions,
            store.clone(),
        ));
        let metrics = Metrics::new();
        metrics.name_node(&node_id);
        let dropped = metrics.messages_dropped();
        let hub = router::Hub::with_counters(
            router::hub::HubSettings {
                max_queued_messages: settings.mqtt.max_queued_messages,
                max_session_expiry: settings.max_session_expiry(),
                max_retained_messages: settings.mqtt.max_retained_messages,
            },
            router::hub::DropCounters {
                queue_full: Some(dropped.with_label_values(&["queue_full"])),
                retained_full: Some(dropped.with_label_values(&["retained_full"])),
            },
        );
        let (events, event_publisher) = events::Events::new(
            hub.clone(),
            Arc::from(node_id.as_str()),
            metrics.event_counters(),
        );
        let sessions = SessionTable::new();
        let fence = cluster::Fence::default();
        let shutdown = CancellationToken::new();
        // A start that fails from here on stops what it started.
        let stop_on_failure = shutdown.clone().drop_guard();
        let health = health::Health::default();
        // A shared registry: follow its change feed (and hold a lease)
        // before anything changes it from here or anyone connects.
        let (cluster, cluster_tasks) = match settings.storage.backend {
            config::StorageBackend::Sqlite => (None, Vec::new()),
            config::StorageBackend::Postgres => {
                let (joined, tasks) = cluster::Cluster::join(
                    cluster::ClusterSettings {
                        node_id: node_id.clone(),
                        lease: settings.lease(),
                        drop_timeout: settings.drop_timeout(),
                    },
                    store::postgres::config(&settings.storage.postgres_url)
                        .map_err(RegistryError::from)?,
                    registry.loaded_seq(),
                    cluster::Local {
                        registry: registry.clone(),
                        sessions: sessions.clone(),
                        hub: hub.clone(),
                        authz: authz.clone(),
                        drop_timeout: settings.drop_timeout(),
                    },
                    fence.clone(),
                    metrics.cluster(),
                    shutdown.clone(),
                )
                .await?;
                registry.set_propagation(joined.propagation());
                // Running before anything here changes the registry: the
                // CA files below wait for this node's feed too.
                let tasks = tasks
                    .into_iter()
                    .map(|(component, task)| {
                        let vital = health.vital(component, shutdown.clone());
                        tokio::spawn(async move {
                            let _vital = vital;
                            task.await
                        })
                    })
                    .collect();
                (Some(joined), tasks)
            }
        };
        ca_files.extend(settings.tls.ca_files.iter().cloned());
        for path in &ca_files {
            register_ca_file(&registry, path).await?;
        }
        let crl_sources = crl::refresh::resolve(&settings.tls.crl)?;
        let tls = TlsContext::new(
            registry.clone(),
            &server_cert,
            &server_key,
            settings.tls.session_cache_size,
        )?;

        let mqtt_listen = settings.mqtt_listen()?;
        let admin_listen = settings.admin_listen()?;
        let mqtt = listener::bind(mqtt_listen).map_err(|source| StartError::Bind {
            key: "mqtt.listen",
            addr: mqtt_listen,
            source,
        })?;
        let admin = bind("admin.listen", admin_listen).await?;
        let mqtt_addr = local_addr("mqtt.listen", &mqtt)?;
        let admin_addr = local_addr("admin.listen", &admin)?;
        data_dir.write_listen_file(&instance::Listening {
            mqtt: mqtt_addr,
            admin: admin_addr,
            pid: std::process::id(),
        })?;

        let refusals_per_second = settings.log.refusals_per_second;
        let ctx = Arc::new(Context {
            settings,
            instance,
            registry,
            sessions,
            hub,
            tls,
            metrics,
            authz,
            fence,
            node_id: Arc::from(node_id.as_str()),
            cluster,
            health,
            refusal_log: Arc::new(log_limit::LogLimiter::new(refusals_per_second)),
            events,
            crl_health: crl::refresh::CrlHealth::starting(&crl_sources),
        });
        let health = ctx.health.clone();
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn({
                let vital = health.vital("MQTT listener", shutdown.clone());
                let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                async move {
                    let _vital = vital;
                    listener::serve(mqtt, ctx, shutdown).await
                }
            }),
            tokio::spawn({
                let vital = health.vital("admin API listener", shutdown.clone());
                let (ctx, shutdown, tls) = (ctx.clone(), shutdown.clone(), admin_tls.clone());
                async move {
                    let _vital = vital;
                    if let Err(e) = admin::serve(admin, ctx, admin_api, tls, shutdown).await {
                        warn!(error = %e, "admin API failed");
                    }
                }
            }),
            tokio::spawn({
                let vital = health.vital(
                    "router's timer (session expiry, will delay)",
                    shutdown.clone(),
                );
                let (hub, sessions, shutdown) =
                    (ctx.hub.clone(), ctx.sessions.clone(), shutdown.clone());
                async move {
                    let _vital = vital;
                    let after_tick = |ended: &[Arc<str>]| {
                        for client_id in ended {
                            sessions.release_expired(client_id);
                        }
                        sessions.shrink_if_sparse();
                    };
                    router::hub::run_timer(hub, after_tick, shutdown).await
                }
            }),
            tokio::spawn({
                let vital = health.vital("certificate expiry timer", shutdown.clone());
                let (sessions, shutdown) = (ctx.sessions.clone(), shutdown.clone());
                async move {
                    let _vital = vital;
                    sessions.run_expiry(shutdown).await
                }
            }),
            tokio::spawn({
                let vital = health.vital("lifecycle event publisher", shutdown.clone());
                let shutdown = shutdown.clone();
                async move {
                    let _vital = vital;
                    event_publisher.run(shutdown).await
                }
            }),
            tokio::spawn(health::watch(
                health.clone(),
                ctx.registry.clone(),
                shutdown.clone(),
            )),
        ];
        tasks.extend(cluster_tasks);
        if !crl_sources.is_empty() {
            let refresher = crl::refresh::Refresher {
                sources: crl_sources,
                revoker: ctx.revoker(),
                health: ctx.crl_health.clone(),
                counters: ctx.metrics.crl_counters(),
                recorder: admin::audit::crl_refresh_recorder(
                    audit.clone(),
                    ctx.node_id.clone(),
                    ctx.metrics.audit_failures(),
                ),
            };
            let vital = health.vital("CRL refresh", shutdown.clone());
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let _vital = vital;
                refresher.run(shutdown).await
            }));
        }
        stop_on_failure.disarm();
        info!(node_id = %ctx.node_id, mqtt = %mqtt_addr, admin = %admin_addr, admin_tls = admin_tls.is_some(), cas = ctx.registry.ca_count(), "certmq started");
        Ok(Broker {
            ctx,
            mqtt_addr,
            admin_addr,
            dev_pki,
            generated_key_file: keys.generated_file,
            server_cert: (server_cert, server_key),
            admin_tls,
            _data_dir: data_dir,
            shutdown,
            tasks,
        })
    }

    /// The bound MQTT (mutual TLS) address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The bound admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn registry(&self) -> &Registry {
        &self.ctx.registry
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.ctx.sessions
    }

    /// What the broker has done so far.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    /// What the router holds now (sessions, subscriptions, retained
    /// messages), for tests and operators.
    pub fn router_footprint(&self) -> router::hub::Footprint {
        self.ctx.hub.footprint()
    }

    /// Resolves when a component the broker cannot run without (the
    /// router, the store writer, a listener) has stopped, with what
    /// stopped. The broker is then of no use: shut it down and exit
    /// non-zero, so that a supervisor restarts it.
    pub async fn failed(&self) -> String {
        self.ctx.health.failed().await
    }

    /// Replaces the topic authorization policies (SIGHUP): new decisions
    /// use them at once, and every live session re-judges its
    /// subscriptions (a session holding one they no longer allow is
    /// closed, MQTT 5 clients with DISCONNECT 0x87). On error nothing
    /// changes.
    pub fn reload_authz(&self, settings: &authz::AuthzSettings) -> Result<(), authz::AuthzError> {
        let mut set = authz::PolicySet::from_settings(settings)?;
        if let Some(dev) = &self.dev_pki {
            set.attach_dev_pki_app(settings, &dev.ca_cert, pki::dev::DEV_APP_NAME)?;
        }
        self.ctx.authz.reload(set);
        info!("authorization policies reloaded");
        Ok(())
    }

    /// Re-reads the server certificate and key files: new handshakes use
    /// them, live sessions keep theirs. On error the old ones stay.
    pub fn reload_server_cert(&self) -> Result<(), tls::TlsError> {
        let (cert, key) = &self.server_cert;
        self.ctx.tls.reload_server_cert(cert, key)?;
        info!(cert = %cert.display(), "server certificate reloaded");
        Ok(())
    }

    /// Whether the admin API is served over TLS (`admin.tls_cert`).
    pub fn admin_uses_tls(&self) -> bool {
        self.admin_tls.is_some()
    }

    /// Re-reads the admin API's certificate, key and client CA files: new
    /// connections use them, open ones keep theirs. On error the old ones
    /// stay. Does nothing when the admin API is plain HTTP.
    pub fn reload_admin_tls(&self) -> Result<(), admin::tls::AdminTlsError> {
        if let Some(tls) = &self.admin_tls {
            tls.reload()?;
            info!(cert = %tls.cert_file().display(), "admin API certificate reloaded");
        }
        Ok(())
    }

    /// The file of the generated admin access key, when no access keys are
    /// configured.
    pub fn generated_key_file(&self) -> Option<&Path> {
        self.generated_key_file.as_deref()
    }

    /// The instance's registration code (GetRegisterCode).
    pub fn registration_code(&self) -> &str {
        &self.ctx.instance.registration_code
    }

    /// The development PKI, when the broker runs on it.
    pub fn dev_pki(&self) -> Option<&DevPki> {
        self.dev_pki.as_ref()
    }

    /// Stops accepting, closes every session (MQTT 5 clients receive
    /// DISCONNECT 0x8B), and stops the admin API.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let closings = self.ctx.sessions.kill_all(DropReason::ShuttingDown);
        if let Err(e) = session::table::wait_all(closings, self.ctx.settings.drop_timeout()).await {
            warn!(error = %e, "sessions still open at shutdown");
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // The last reference to the context closes the registry store.
        let store = self.ctx.registry.location();
        drop(self.ctx);
        info!(%store, "certmq stopped");
    }
}

/// The server certificate and key, plus CAs to register: configured files,
/// or the development PKI (created on first use).
fn resolve_pki(
    settings: &Settings,
) -> Result<(PathBuf, PathBuf, Vec<PathBuf>, Option<DevPki>), StartError> {
    if !settings.tls.server_cert.is_empty() {
        return Ok((
            PathBuf::from(&settings.tls.server_cert),
            PathBuf::from(&settings.tls.server_key),
            Vec::new(),
            None,
        ));
    }
    let (dev, created) = DevPki::ensure(&settings.tls.dev_pki_dir)?;
    if created {
        warn!(dir = %dev.dir.display(), "generated a DEVELOPMENT PKI (not for production)");
    } else {
        warn!(dir = %dev.dir.display(), "using the DEVELOPMENT PKI (not for production)");
    }
    Ok((
        dev.server_cert.clone(),
        dev.server_key.clone(),
        vec![dev.ca_cert.clone()],
        Some(dev),
    ))
}

/// Registers every CA certificate in a PEM file, skipping registered ones.
async fn register_ca_file(registry: &Registry, path: &Path) -> Result<(), StartError> {
    let fail = |reason: String| StartError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    for der in pki::pem_certificates(path).map_err(fail)? {
        let ca = CaCert::parse(der, UnixTime::now()).map_err(|e| fail(e.to_string()))?;
        if registry.ca(&ca.sn).is_some() {
            info!(ca_sn = %ca.sn, file = %path.display(), "CA already registered");
            continue;
        }
        match registry.register_ca(CaRegistration::declared(ca)).await {
            Ok(sn) => info!(ca_sn = %sn, file = %path.display(), "CA registered"),
            Err(RegistryError::CaAlreadyRegistered(sn)) => {
                info!(ca_sn = %sn, file = %path.display(), "CA already registered")
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Ok(())
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}
