//! A process's CPU time and resident memory, from /proc.

use std::time::Duration;

use anyhow::{Context, Result};

/// User and system CPU time of `pid`, apart.
pub fn cpu_times(pid: u32) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let hz = 100; // USER_HZ on Linux
    Ok((
        Duration::from_millis(ticks(11) * 1000 / hz),
        Duration::from_millis(ticks(12) * 1000 / hz),
    ))
}

/// Resident memory of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Anonymous resident memory of `pid` (heap, stacks; not the binary's
/// pages), in bytes.
pub fn rss_anon_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "RssAnon:")
}

/// Data segment size (heap and anonymous mappings) of `pid`, in bytes.
pub fn vmdata_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmData:")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no {field}"))?;
    Ok(kb * 1024)
}
