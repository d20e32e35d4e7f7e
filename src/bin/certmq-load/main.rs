//! `certmq-load`: the load generator of certmq's benchmarks. It speaks
//! plain MQTT over mutual TLS 1.3, so it measures any broker (certmq,
//! Mosquitto, ...), and prints one JSON object of results per run on
//! stdout (progress goes to stderr).
//!
//! Modes: `connect` (connects per second, latency), `hold` (idle
//! connections, memory per connection), `publish` (also `fan-in`: QoS 0/1
//! throughput from P publishers to one subscriber), `fan-out` (one
//! publisher, S subscribers), `churn` (distinct devices coming and going),
//! and, through certmq's admin API, `revoke` (admin call to closed socket)
//! and `mass-drop` (InactivateCaCertificate with many live sessions).

mod flow;
mod mqtt;
mod pool;
mod procstat;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pool::Pool;

#[derive(Parser)]
#[command(
    name = "certmq-load",
    about = "Load generator for MQTT over mutual TLS (certmq's benchmarks)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Clone)]
struct Common {
    /// The broker's MQTT over TLS address.
    #[arg(long, default_value = "127.0.0.1:8883", global = true)]
    target: SocketAddr,
    /// More brokers (nodes of one cluster): sessions go to --target and
    /// these in turn.
    #[arg(long, global = true)]
    also_target: Vec<SocketAddr>,
    /// The CA of the broker's server certificate.
    #[arg(long, global = true, default_value = "certs/dev/ca.pem")]
    server_ca: PathBuf,
    /// The CA that issues the load's device certificates (cert and key).
    #[arg(long, global = true, default_value = "certs/dev/ca.pem")]
    device_ca_cert: PathBuf,
    #[arg(long, global = true, default_value = "certs/dev/ca.key")]
    device_ca_key: PathBuf,
    /// Where issued device certificates are cached.
    #[arg(long, global = true, default_value = "target/load-devices")]
    devices_dir: PathBuf,
    /// How many distinct device certificates to use.
    #[arg(long, global = true, default_value_t = 200)]
    pool: usize,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, global = true, default_value_t = 4)]
    mqtt: u8,
    /// Async worker threads of the generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// The broker's process id, to report its CPU time and memory.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Spread connections over source addresses 127.0.0.1-250.
    #[arg(long, global = true, default_value_t = false)]
    spread: bool,
    /// A label for the JSON result (e.g. the broker's name).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// No progress bar.
    #[arg(long, global = true, default_value_t = false)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// N connections (TCP + TLS 1.3 + CONNECT/CONNACK, then DISCONNECT),
    /// at most C in flight: connects/s and latency percentiles.
    Connect {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Hostile background: TCP connections that never start TLS, held
        /// open during the run.
        #[arg(long, default_value_t = 0)]
        stall_tcp: usize,
        /// Hostile background: connections that send a ClientHello and
        /// then nothing, held open during the run.
        #[arg(long, default_value_t = 0)]
        stall_handshake: usize,
    },
    /// Opens N idle connections and holds them; reports the broker's
    /// memory per connection, and after closing them, what it gave back.
    Hold {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to hold the connections open.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
        /// Seconds to wait after closing them before measuring what the
        /// broker gave back.
        #[arg(long, default_value_t = 3)]
        after_close_secs: u64,
    },
    /// QoS 0 or 1 messages from P publishers to one subscriber: messages/s.
    /// Each publisher publishes in its own namespace,
    /// `devices/<its CN>/bench`; the subscriber (pool device 0, CN
    /// `load-000000`) subscribes to `devices/#`, so under the default
    /// policies it needs the fleet application's policy (see
    /// docs/BENCHMARKS.md). `fan-in` is the same with many publishers.
    #[command(alias = "fan-in")]
    Publish {
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// QoS 1: PUBLISH packets in flight per publisher.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// One publisher (pool device 0) to S subscribers of one topic (pool
    /// devices 1..=S): deliveries/s. Under certmq's default policies the
    /// subscribers need a policy that lets them subscribe to the topic and
    /// the publisher one to publish it (see benches/side-by-side.sh).
    FanOut {
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages published (each subscriber receives all of them).
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// QoS 1: PUBLISH packets in flight.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value = "fleet/broadcast")]
        topic: String,
    },
    /// With K other live sessions, inactivates devices one by one (certmq's
    /// admin API): time from sending the call to the socket closing.
    Revoke {
        #[command(flatten)]
        admin: Admin,
        #[arg(long, default_value_t = 1000)]
        others: usize,
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Each other session first subscribes (QoS 1) to its own filter,
        /// `devices/<its CN>/other<i>`.
        #[arg(long, default_value_t = false)]
        subscribe: bool,
        /// The inactivated sessions connect here (another node of the
        /// cluster the admin call goes to) rather than to the targets.
        #[arg(long)]
        revoked_at: Option<SocketAddr>,
    },
    /// N distinct devices (N = --pool), each connecting once, subscribing
    /// to its own `devices/<CN>/cmd` and disconnecting: the broker's
    /// memory before, after all have left, and (persistent sessions) after
    /// their expiry.
    Churn {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Session expiry interval (MQTT 5) of persistent sessions, in
        /// seconds; 0: clean sessions. Over 3.1.1, non-zero means clean
        /// session 0 (the broker's mqtt.max_session_expiry_secs applies).
        #[arg(long, default_value_t = 0)]
        expiry_secs: u32,
        /// Seconds to wait after the last device left before measuring
        /// (with persistent sessions: longer than their expiry).
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
        /// Devices churned before the first measurement (not counted): the
        /// broker's first connections page in code and fill bounded caches.
        #[arg(long, default_value_t = 0)]
        warm_up: usize,
    },
    /// N registry changes through the admin API, one at a time: devices
    /// 0, 1, ... (registered, e.g. by an earlier run) inactivated and
    /// activated again in turn. Their rate, and each call's latency.
    Changes {
        #[command(flatten)]
        admin: Admin,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// N live sessions under one CA, then InactivateCaCertificate: time
    /// until every socket is closed.
    MassDrop {
        #[command(flatten)]
        admin: Admin,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

#[derive(Args)]
struct Admin {
    #[arg(long, default_value = "127.0.0.1:8080")]
    admin: String,
    #[arg(long, env = "CERTMQ_ACCESS_KEY_ID")]
    access_key_id: String,
    #[arg(long, env = "CERTMQ_ACCESS_KEY_SECRET", hide_env_values = true)]
    access_key_secret: String,
    #[arg(long, default_value = "mqtt-certmq-local")]
    instance: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(cli))?;
    println!("{result}");
    Ok(())
}

fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

async fn run(cli: Cli) -> Result<Value> {
    let c = &cli.common;
    let pool_size = match &cli.mode {
        // Every session its own device: the others must not share the
        // certificates being revoked.
        Mode::Revoke { count, others, .. } => c.pool.max(count + others),
        Mode::Publish { publishers, .. } => c.pool.max(publishers + 1),
        Mode::FanOut { subscribers, .. } => c.pool.max(subscribers + 1),
        _ => c.pool,
    };
    let pool = Arc::new(Pool::load(
        &c.devices_dir,
        pool_size,
        &c.device_ca_cert,
        &c.device_ca_key,
        &c.server_ca,
    )?);
    let mut result = match cli.mode {
        Mode::Connect {
            count,
            concurrency,
            stall_tcp,
            stall_handshake,
        } => {
            let stalled = stall(c, &pool, stall_tcp, stall_handshake).await?;
            let mut result = connect(c, pool, count, concurrency).await?;
            let still_open = stalled.len();
            drop(stalled);
            result["stalled_connections"] =
                json!({"tcp": stall_tcp, "mid_handshake": stall_handshake, "held": still_open});
            result
        }
        Mode::Hold {
            count,
            concurrency,
            hold_secs,
            after_close_secs,
        } => hold(c, pool, count, concurrency, hold_secs, after_close_secs).await?,
        Mode::Publish {
            qos,
            publishers,
            messages,
            payload,
            window,
        } => flow::fan_in(c, pool, qos, publishers, messages, payload, window).await?,
        Mode::FanOut {
            qos,
            subscribers,
            messages,
            payload,
            window,
            topic,
        } => flow::fan_out(c, pool, qos, subscribers, messages, payload, window, &topic).await?,
        Mode::Revoke {
            admin,
            others,
            count,
            subscribe,
            revoked_at,
        } => revoke(c, pool, &admin, others, count, subscribe, revoked_at).await?,
        Mode::MassDrop { admin, count } => mass_drop(c, pool, &admin, count).await?,
        Mode::Changes { admin, count } => changes(pool, &admin, count).await?,
        Mode::Churn {
            concurrency,
            expiry_secs,
            settle_secs,
            warm_up,
        } => churn(c, pool, concurrency, expiry_secs, settle_secs, warm_up).await?,
    };
    result["label"] = json!(c.label);
    result["mqtt"] = json!(c.mqtt);
    result["generator_threads"] = json!(c.threads);
    Ok(result)
}

fn progress(c: &Common, len: u64, what: &str) -> ProgressBar {
    if c.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Latency percentiles in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> Value {
    if samples.is_empty() {
        return json!(null);
    }
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    json!({"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0), "samples": samples.len()})
}

/// Opens one MQTT session.
async fn open(
    c: &Common,
    pool: &Pool,
    i: usize,
    client_id: &str,
    keep_alive: u16,
) -> Result<mqtt::Stream> {
    let device = &pool.devices[i % pool.devices.len()];
    let target = match i % (c.also_target.len() + 1) {
        0 => c.target,
        k => c.also_target[k - 1],
    };
    let mut stream =
        mqtt::tls_connect(target, mqtt::source(i, c.spread), device.tls.clone()).await?;
    mqtt::mqtt_connect(&mut stream, c.mqtt, client_id, keep_alive).await?;
    Ok(stream)
}

/// Opens connections that stall: `tcp` that never send a byte, `handshake`
/// that send a ClientHello and nothing more.
async fn stall(
    c: &Common,
    pool: &Pool,
    tcp: usize,
    handshake: usize,
) -> Result<Vec<tokio::net::TcpStream>> {
    let mut held = Vec::with_capacity(tcp + handshake);
    let hello = {
        let mut conn = rustls::ClientConnection::new(
            pool.devices[0].tls.clone(),
            rustls_pki_types::ServerName::try_from("localhost")?,
        )?;
        let mut out = Vec::new();
        conn.write_tls(&mut out)?;
        out
    };
    for i in 0..tcp + handshake {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(from) = mqtt::source(i, c.spread) {
            socket.bind(from)?;
        }
        let mut stream = socket.connect(c.target).await?;
        if i >= tcp {
            stream.write_all(&hello).await?;
        }
        held.push(stream);
    }
    Ok(held)
}

async fn connect(c: &Common, pool: Arc<Pool>, count: usize, concurrency: usize) -> Result<Value> {
    let bar = progress(c, count as u64, "connect");
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let cpu_before = c.broker_pid.map(procstat::cpu_times);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (pool, next, errors, bar) = (pool.clone(), next.clone(), errors.clone(), bar.clone());
        let common = clone_common(c);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return latencies;
                }
                let t0 = Instant::now();
                match open(&common, &pool, i, &format!("c{i}"), 60).await {
                    Ok(mut stream) => {
                        latencies.push(t0.elapsed());
                        let _ = stream.write_all(&mqtt::DISCONNECT).await;
                        let _ = stream.shutdown().await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                bar.inc(1);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for w in workers {
        latencies.extend(w.await?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let ok = latencies.len();
    let mut result = json!({
        "mode": "connect",
        "count": count,
        "concurrency": concurrency,
        "connected": ok,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "connects_per_second": ok as f64 / elapsed.as_secs_f64(),
        "latency_ms": percentiles(latencies),
    });
    if let (Some(pid), Some(Ok((user0, sys0)))) = (c.broker_pid, cpu_before) {
        let (user1, sys1) = procstat::cpu_times(pid)?;
        let (user, sys) = (user1.saturating_sub(user0), sys1.saturating_sub(sys0));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ok.max(1) as f64;
        result["broker_cpu_seconds"] = json!((user + sys).as_secs_f64());
        result["broker_cpu_us_per_connect"] = json!(per(user + sys));
        result["broker_user_cpu_us_per_connect"] = json!(per(user));
        result["broker_system_cpu_us_per_connect"] = json!(per(sys));
    }
    Ok(result)
}

fn clone_common(c: &Common) -> Common {
    c.clone()
}

/// Opens `count` sessions (at most `concurrency` at a time) with client ids
/// `prefix{i}` from devices `first..`; returns them in order.
async fn open_many(
    c: &Common,
    pool: &Arc<Pool>,
    count: usize,
    concurrency: usize,
    prefix: &str,
    device_offset: usize,
    bar: &ProgressBar,
) -> Result<Vec<mqtt::Stream>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = semaphore.clone().acquire_owned().await?;
        let (pool, common, bar, prefix) = (
            pool.clone(),
            clone_common(c),
            bar.clone(),
            prefix.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let stream = open(
                &common,
                &pool,
                device_offset + i,
                &format!("{prefix}{i}"),
                0,
            )
            .await;
            drop(permit);
            bar.inc(1);
            stream
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        streams.push(task.await?.with_context(|| format!("session {i}"))?);
    }
    Ok(streams)
}

async fn hold(
    c: &Common,
    pool: Arc<Pool>,
    count: usize,
    concurrency: usize,
    hold_secs: u64,
    after_close_secs: u64,
) -> Result<Value> {
    let rss_before = c.broker_pid.map(procstat::rss_bytes).transpose()?;
    let bar = progress(c, count as u64, "hold");
    let started = Instant::now();
    let streams = open_many(c, &pool, count, concurrency, "h", 0, &bar).await?;
    let opened = started.elapsed();
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let rss_holding = c.broker_pid.map(procstat::rss_bytes).transpose()?;
    drop(streams);
    tokio::time::sleep(Duration::from_secs(after_close_secs)).await;
    let rss_after = c.broker_pid.map(procstat::rss_bytes).transpose()?;
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => json!((b as f64 - a as f64) / count as f64),
        _ => json!(null),
    };
    Ok(json!({
        "mode": "hold",
        "count": count,
        "open_seconds": opened.as_secs_f64(),
        "broker_rss_before": rss_before,
        "broker_rss_holding": rss_holding,
        "broker_rss_after_close": rss_after,
        "broker_bytes_per_connection": per(rss_before, rss_holding),
        "broker_bytes_kept_per_connection_after_close": per(rss_before, rss_after),
    }))
}

async fn churn(
    c: &Common,
    pool: Arc<Pool>,
    concurrency: usize,
    expiry_secs: u32,
    settle_secs: u64,
    warm_up: usize,
) -> Result<Value> {
    let warm_up = warm_up.min(pool.devices.len());
    if warm_up > 0 {
        churn_range(c, &pool, concurrency, expiry_secs, 0, warm_up).await?;
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    }
    let count = pool.devices.len() - warm_up;
    let memory = |pid: Option<u32>| -> Result<Option<(u64, u64, u64)>> {
        pid.map(|p| {
            Ok((
                procstat::rss_bytes(p)?,
                procstat::vmdata_bytes(p)?,
                procstat::rss_anon_bytes(p)?,
            ))
        })
        .transpose()
    };
    let before = memory(c.broker_pid)?;
    let started = Instant::now();
    churn_range(
        c,
        &pool,
        concurrency,
        expiry_secs,
        warm_up,
        pool.devices.len(),
    )
    .await?;
    let churned = started.elapsed();
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let after = memory(c.broker_pid)?;
    let delta = |pick: fn((u64, u64, u64)) -> u64| match (before, after) {
        (Some(b), Some(a)) => json!(pick(a) as i64 - pick(b) as i64),
        _ => json!(null),
    };
    Ok(json!({
        "mode": "churn",
        "devices": count,
        "warm_up": warm_up,
        "expiry_secs": expiry_secs,
        "settle_secs": settle_secs,
        "seconds": churned.as_secs_f64(),
        "broker_rss_before": before.map(|m| m.0),
        "broker_rss_after": after.map(|m| m.0),
        "broker_vmdata_before": before.map(|m| m.1),
        "broker_vmdata_after": after.map(|m| m.1),
        "broker_rss_growth": delta(|m| m.0),
        "broker_rss_anon_growth": delta(|m| m.2),
        "broker_vmdata_growth": delta(|m| m.1),
    }))
}

/// Devices `from..to` of the pool connect once each, subscribe to their
/// own `devices/<CN>/cmd`, and disconnect.
async fn churn_range(
    c: &Common,
    pool: &Arc<Pool>,
    concurrency: usize,
    expiry_secs: u32,
    from: usize,
    to: usize,
) -> Result<()> {
    let bar = progress(c, (to - from) as u64, "churn");
    let next = Arc::new(AtomicUsize::new(from));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (pool, next, bar) = (pool.clone(), next.clone(), bar.clone());
        let common = clone_common(c);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok::<(), anyhow::Error>(());
                }
                let device = &pool.devices[i];
                let mut stream = mqtt::tls_connect(
                    common.target,
                    mqtt::source(i, common.spread),
                    device.tls.clone(),
                )
                .await?;
                let client_id = format!("churn-{i}");
                stream
                    .write_all(&mqtt::connect_session(
                        common.mqtt,
                        &client_id,
                        60,
                        expiry_secs,
                    ))
                    .await?;
                let (first, body) = mqtt::read_packet(&mut stream).await?;
                if first != 0x20 || body.len() < 2 || body[1] != 0 {
                    bail!("CONNACK refused: {first:#04x} {body:02x?}");
                }
                let filter = format!("devices/{}/cmd", device.common_name);
                stream
                    .write_all(&mqtt::subscribe(common.mqtt, &filter, 1))
                    .await?;
                let (first, suback) = mqtt::read_packet(&mut stream).await?;
                if first != 0x90 || suback.last().is_some_and(|code| *code >= 0x80) {
                    bail!("the subscription to {filter} was refused: {first:#04x} {suback:02x?}");
                }
                stream.write_all(&[0xE0, 0x00]).await?;
                let _ = stream.shutdown().await;
                bar.inc(1);
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    bar.finish_and_clear();
    Ok(())
}

fn admin_client(admin: &Admin) -> Result<certmq::admin::client::AdminClient> {
    Ok(certmq::admin::client::AdminClient::new(
        &admin.admin,
        &admin.access_key_id,
        &admin.access_key_secret,
    )?)
}

/// Waits until the broker closes `stream`; returns when.
async fn closed(mut stream: mqtt::Stream) -> Instant {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => continue,
        }
    }
}

async fn revoke(
    c: &Common,
    pool: Arc<Pool>,
    admin: &Admin,
    others: usize,
    count: usize,
    subscribe: bool,
    revoked_at: Option<SocketAddr>,
) -> Result<Value> {
    let client = admin_client(admin)?;
    let bar = progress(c, (others + count) as u64, "sessions");
    // Targets use devices 0..count, the others count..count+others: one
    // session per device, so an inactivation drops exactly one session.
    let mut at = c.clone();
    if let Some(node) = revoked_at {
        at.target = node;
        at.also_target.clear();
    }
    let targets = open_many(&at, &pool, count, 64, "target", 0, &bar).await?;
    let mut other_sessions = open_many(c, &pool, others, 64, "other", count, &bar).await?;
    bar.finish_and_clear();
    if subscribe {
        other_sessions = flow::subscribe_each(c, &pool, other_sessions, count, "other").await?;
    }
    let mut latencies = Vec::with_capacity(count);
    let mut answers = Vec::with_capacity(count);
    for (i, stream) in targets.into_iter().enumerate() {
        let device = &pool.devices[i];
        let watcher = tokio::spawn(closed(stream));
        let params = device_params(admin, device);
        let t0 = Instant::now();
        let (status, body) = client.call("InactivateDeviceCertificate", &params).await?;
        let answered = t0.elapsed();
        if status != 200 {
            bail!("InactivateDeviceCertificate answered {status}: {body}");
        }
        let closed_at = watcher.await?;
        latencies.push(closed_at.saturating_duration_since(t0));
        answers.push(answered);
        client.call("ActiveDeviceCertificate", &params).await?;
    }
    let still_open = other_sessions.len();
    drop(other_sessions);
    Ok(json!({
        "mode": "revoke",
        "nodes": c.also_target.len() + 1,
        "revoked_at_another_node": revoked_at.is_some(),
        "other_sessions": still_open,
        "others_subscribed": subscribe,
        "count": count,
        "call_to_socket_closed_ms": percentiles(latencies),
        "call_to_answer_ms": percentiles(answers),
    }))
}

/// The parameters of a device call on `device`.
fn device_params(admin: &Admin, device: &pool::Device) -> Vec<(String, String)> {
    [
        ("MqttInstanceId", admin.instance.clone()),
        ("CaSn", device.ca_sn.clone()),
        ("DeviceSn", device.device_sn.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn changes(pool: Arc<Pool>, admin: &Admin, count: usize) -> Result<Value> {
    let client = admin_client(admin)?;
    let devices = count.div_ceil(2).min(pool.devices.len()).max(1);
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let device = &pool.devices[(i / 2) % devices];
        let action = if i % 2 == 0 {
            "InactivateDeviceCertificate"
        } else {
            "ActiveDeviceCertificate"
        };
        let params = device_params(admin, device);
        let t0 = Instant::now();
        let (status, body) = client.call(action, &params).await?;
        if status != 200 {
            bail!("{action} answered {status}: {body}");
        }
        latencies.push(t0.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "mode": "changes",
        "count": count,
        "seconds": elapsed,
        "changes_per_second": count as f64 / elapsed,
        "call_ms": percentiles(latencies),
    }))
}

async fn mass_drop(c: &Common, pool: Arc<Pool>, admin: &Admin, count: usize) -> Result<Value> {
    let client = admin_client(admin)?;
    let bar = progress(c, count as u64, "sessions");
    let sessions = open_many(c, &pool, count, 64, "mass", 0, &bar).await?;
    bar.finish_and_clear();
    let watchers: Vec<_> = sessions
        .into_iter()
        .map(|s| tokio::spawn(closed(s)))
        .collect();
    let params = vec![
        ("MqttInstanceId".to_owned(), admin.instance.clone()),
        ("Sn".to_owned(), pool.devices[0].ca_sn.clone()),
    ];
    let t0 = Instant::now();
    let (status, body) = client.call("InactivateCaCertificate", &params).await?;
    let answered = t0.elapsed();
    if status != 200 {
        bail!("InactivateCaCertificate answered {status}: {body}");
    }
    let mut last = t0;
    for w in watchers {
        last = last.max(w.await?);
    }
    client.call("ActiveCaCertificate", &params).await?;
    Ok(json!({
        "mode": "mass-drop",
        "sessions": count,
        "call_to_answer_ms": answered.as_secs_f64() * 1000.0,
        "call_to_all_closed_ms": last.saturating_duration_since(t0).as_secs_f64() * 1000.0,
    }))
}
