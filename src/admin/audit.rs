//! The audit trail: one structured record per mutating admin call, to the
//! `certmq::audit` log target, whatever its outcome.

use std::time::Duration;

use super::rpc::RpcRequest;

/// The parameters that name what a call acted on.
const TARGETS: [&str; 6] = [
    "Sn",
    "CaSn",
    "DeviceSn",
    "ClientId",
    "CaName",
    "MqttInstanceId",
];

pub struct AuditRecord<'a> {
    pub req: &'a RpcRequest,
    pub action: &'a str,
    pub access_key_id: Option<&'a str>,
    pub account: Option<&'a str>,
    /// `Success`, or the error code answered.
    pub code: &'a str,
    pub duration: Duration,
}

pub fn write(record: AuditRecord<'_>) {
    let targets = TARGETS
        .iter()
        .filter_map(|name| {
            record
                .req
                .param(name)
                .map(|v| format!("{name}={}", v.chars().take(128).collect::<String>()))
        })
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        target: "certmq::audit",
        request_id = %record.req.request_id,
        access_key_id = record.access_key_id.unwrap_or("-"),
        account = record.account.unwrap_or("-"),
        action = record.action,
        targets = %targets,
        code = record.code,
        duration_ms = record.duration.as_secs_f64() * 1000.0,
        "admin call"
    );
}
