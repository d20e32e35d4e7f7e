//! The message path under load: fan-in (`publish`: P publishers, one
//! subscriber) and fan-out (one publisher, S subscribers of one topic).
//!
//! Both sides behave as a client library does: a publisher writes what its
//! in-flight window lets it send in one go, a subscriber acknowledges the
//! QoS 1 messages one read brought in one write. Writing every packet on
//! its own made the generator, not the broker, the bottleneck (one
//! syscall and one TLS record per message on a 2-core machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::pool::Pool;
use crate::{Common, mqtt, open, open_many, progress};

/// How long a receiver waits for the next message before it stops
/// counting (what it has not got by then is reported lost).
const QUIET: Duration = Duration::from_secs(5);

/// The whole run's bound, whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What one subscriber got.
struct Received {
    messages: u64,
    last: Instant,
}

/// Reads PUBLISH packets until `expected` arrived (or nothing came for
/// [`QUIET`]), acknowledging QoS 1 ones.
async fn receive(
    stream: mqtt::Stream,
    expected: u64,
    counter: Arc<AtomicU64>,
    bar: ProgressBar,
) -> Received {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let deadline = Instant::now() + RUN_LIMIT;
    let mut got = Received {
        messages: 0,
        last: Instant::now(),
    };
    let mut acks = Vec::new();
    while got.messages < expected && Instant::now() < deadline {
        match tokio::time::timeout(QUIET, mqtt::read_packet(&mut reader)).await {
            Ok(Ok((first, body))) if first >> 4 == 3 => {
                got.messages += 1;
                got.last = Instant::now();
                if counter.fetch_add(1, Ordering::Relaxed) % 256 == 0 {
                    bar.set_position(counter.load(Ordering::Relaxed));
                }
                if (first >> 1) & 3 == 1 {
                    if let Some(pkid) = packet_id(&body) {
                        acks.extend(mqtt::puback(pkid));
                    }
                }
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
        if !acks.is_empty() && reader.buffer().is_empty() {
            if writer.write_all(&acks).await.is_err() {
                break;
            }
            acks.clear();
        }
    }
    got
}

/// The packet id of a QoS 1 or 2 PUBLISH body (after the topic).
fn packet_id(body: &[u8]) -> Option<u16> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    Some(u16::from_be_bytes([
        *body.get(2 + len)?,
        *body.get(3 + len)?,
    ]))
}

/// Publishes `count` messages to `topic`: QoS 0 in 32 KB writes, QoS 1
/// with at most `window` unacknowledged, written as the window opens.
async fn send(
    stream: &mut mqtt::Stream,
    level: u8,
    topic: &str,
    qos: u8,
    count: usize,
    body: &[u8],
    window: usize,
) -> Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    if qos == 0 {
        let mut batch = Vec::with_capacity(32 * 1024 + body.len() + 64);
        for n in 0..count {
            batch.extend(mqtt::publish(level, topic, 0, 0, body));
            if batch.len() >= 32 * 1024 || n + 1 == count {
                writer.write_all(&batch).await?;
                batch.clear();
            }
        }
        writer.flush().await?;
        return Ok(());
    }
    let window = tokio::sync::Semaphore::new(window.max(1));
    let acks = async {
        let mut acked = 0;
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending = Vec::new();
        while acked < count {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                bail!("the broker closed the publisher after {acked} acknowledgements");
            }
            pending.extend_from_slice(&buf[..n]);
            let (done, used) = complete_acks(&pending)?;
            pending.drain(..used);
            acked += done;
            window.add_permits(done);
        }
        Ok::<_, anyhow::Error>(())
    };
    let sends = async {
        let mut n = 0;
        let mut batch = Vec::new();
        while n < count {
            window.acquire().await?.forget();
            let more = window.available_permits().min(count - n - 1);
            if more > 0 {
                window.acquire_many(more as u32).await?.forget();
            }
            for _ in 0..=more {
                let pkid = (n % 65_000 + 1) as u16;
                batch.extend(mqtt::publish(level, topic, 1, pkid, body));
                n += 1;
            }
            writer.write_all(&batch).await?;
            batch.clear();
        }
        writer.flush().await?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::try_join!(acks, sends)?;
    Ok(())
}

/// Counts the complete PUBACK packets at the start of `bytes`: (how many,
/// bytes they take). Anything else from the broker is an error.
fn complete_acks(bytes: &[u8]) -> Result<(usize, usize)> {
    let (mut done, mut at) = (0, 0);
    while bytes.len() >= at + 2 {
        let (first, len) = (bytes[at], usize::from(bytes[at + 1]));
        if first != 0x40 || len >= 128 {
            bail!("expected PUBACK, got packet {first:#04x}");
        }
        if bytes.len() < at + 2 + len {
            break;
        }
        if len > 2 && bytes[at + 4] >= 0x80 {
            bail!("PUBACK with reason code {:#04x}", bytes[at + 4]);
        }
        done += 1;
        at += 2 + len;
    }
    Ok((done, at))
}

/// Subscribes an open session to `filter` and waits for a granted SUBACK.
async fn subscribe(stream: &mut mqtt::Stream, level: u8, filter: &str, qos: u8) -> Result<()> {
    stream
        .write_all(&mqtt::subscribe(level, filter, qos))
        .await?;
    let (first, suback) = mqtt::read_packet(stream).await?;
    if first != 0x90 {
        bail!("no SUBACK for {filter}");
    }
    if suback.last().is_some_and(|code| *code >= 0x80) {
        bail!(
            "the subscription to {filter} was refused: give the subscriber a policy that allows it \
             (docs/BENCHMARKS.md, benches/side-by-side.sh)"
        );
    }
    Ok(())
}

/// QoS 0 or 1 messages from P publishers (each in its own namespace,
/// `devices/<its CN>/bench`) to one subscriber (pool device 0, CN
/// `load-000000`, on `devices/#`).
#[allow(clippy::too_many_arguments)]
pub async fn fan_in(
    c: &Common,
    pool: Arc<Pool>,
    qos: u8,
    publishers: usize,
    messages: usize,
    payload: usize,
    window: usize,
) -> Result<Value> {
    if qos > 1 {
        bail!("--qos is 0 or 1");
    }
    let publishers = publishers.max(1);
    let level = c.mqtt;
    let mut subscriber = open(c, &pool, 0, "bench-sub", 0).await?;
    subscribe(&mut subscriber, level, "devices/#", qos).await?;
    let per_publisher = messages / publishers;
    let total = (per_publisher * publishers) as u64;
    let bar = progress(c, total, &format!("fan-in qos{qos}"));
    let mut streams = open_many(
        c,
        &pool,
        publishers,
        32,
        "bench-pub",
        1,
        &ProgressBar::hidden(),
    )
    .await?
    .into_iter();
    let counter = Arc::new(AtomicU64::new(0));
    let receiver = tokio::spawn(receive(subscriber, total, counter, bar.clone()));
    let started = Instant::now();
    let body = Arc::new(vec![b'x'; payload]);
    let mut tasks = Vec::with_capacity(publishers);
    for p in 0..publishers {
        let Some(mut stream) = streams.next() else {
            break;
        };
        let topic = format!(
            "devices/{}/bench",
            pool.devices[(p + 1) % pool.devices.len()].common_name
        );
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &mut stream,
                level,
                &topic,
                qos,
                per_publisher,
                &body,
                window,
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sent = started.elapsed();
    let got = receiver.await?;
    bar.finish_and_clear();
    let elapsed = got.last.saturating_duration_since(started);
    Ok(json!({
        "mode": "publish",
        "qos": qos,
        "publishers": publishers,
        "subscribers": 1,
        "payload_bytes": payload,
        "sent": total,
        "received": got.messages,
        "send_seconds": sent.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "lost": total - got.messages,
        "messages_per_second": got.messages as f64 / elapsed.as_secs_f64(),
    }))
}

/// One publisher (pool device 0) publishes `messages` to `topic`; S
/// subscribers (devices 1..=S) of that topic each receive all of them.
#[allow(clippy::too_many_arguments)]
pub async fn fan_out(
    c: &Common,
    pool: Arc<Pool>,
    qos: u8,
    subscribers: usize,
    messages: usize,
    payload: usize,
    window: usize,
    topic: &str,
) -> Result<Value> {
    if qos > 1 {
        bail!("--qos is 0 or 1");
    }
    let level = c.mqtt;
    let sessions = open_many(
        c,
        &pool,
        subscribers,
        32,
        "fan-sub",
        1,
        &ProgressBar::hidden(),
    )
    .await?;
    let mut subscribed = Vec::with_capacity(sessions.len());
    for mut stream in sessions {
        let topic = topic.to_owned();
        subscribed.push(tokio::spawn(async move {
            subscribe(&mut stream, level, &topic, qos)
                .await
                .map(|()| stream)
        }));
    }
    let mut streams = Vec::with_capacity(subscribed.len());
    for s in subscribed {
        streams.push(s.await??);
    }
    let total = (messages * streams.len()) as u64;
    let bar = progress(c, total, &format!("fan-out qos{qos}"));
    let counter = Arc::new(AtomicU64::new(0));
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(receive(s, messages as u64, counter.clone(), bar.clone())))
        .collect();
    let mut publisher = open(c, &pool, 0, "fan-pub", 0).await?;
    let started = Instant::now();
    send(
        &mut publisher,
        level,
        topic,
        qos,
        messages,
        &vec![b'x'; payload],
        window,
    )
    .await?;
    let sent = started.elapsed();
    let (mut got, mut last) = (0, started);
    for r in receivers {
        let r = r.await?;
        got += r.messages;
        last = last.max(r.last);
    }
    bar.finish_and_clear();
    let elapsed = last.saturating_duration_since(started);
    Ok(json!({
        "mode": "fan-out",
        "qos": qos,
        "publishers": 1,
        "subscribers": subscribers,
        "payload_bytes": payload,
        "messages": messages,
        "deliveries_expected": total,
        "received": got,
        "send_seconds": sent.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "lost": total - got,
        "deliveries_per_second": got as f64 / elapsed.as_secs_f64(),
    }))
}

/// Subscribes each session `i` to its own filter, `devices/<CN>/<prefix><i>`
/// (inside its namespace under the default policies).
pub async fn subscribe_each(
    c: &Common,
    pool: &Pool,
    sessions: Vec<mqtt::Stream>,
    device_offset: usize,
    prefix: &str,
) -> Result<Vec<mqtt::Stream>> {
    let mut tasks = Vec::with_capacity(sessions.len());
    for (i, mut stream) in sessions.into_iter().enumerate() {
        let cn = &pool.devices[(device_offset + i) % pool.devices.len()].common_name;
        let filter = format!("devices/{cn}/{prefix}{i}");
        let level = c.mqtt;
        tasks.push(tokio::spawn(async move {
            subscribe(&mut stream, level, &filter, 1)
                .await
                .map(|()| stream)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_counted_whole_and_errors_named() {
        let two = [0x40, 0x02, 0x00, 0x01, 0x40, 0x03, 0x00, 0x02, 0x00, 0x40];
        assert_eq!(complete_acks(&two).unwrap(), (2, 9));
        assert!(complete_acks(&[0x40, 0x03, 0x00, 0x01, 0x87]).is_err());
        assert!(complete_acks(&[0x20, 0x02, 0x00, 0x00]).is_err());
        assert_eq!(packet_id(&[0x00, 0x01, b't', 0x12, 0x34]), Some(0x1234));
        assert_eq!(packet_id(&[0x00, 0x05, b't']), None);
    }
}
