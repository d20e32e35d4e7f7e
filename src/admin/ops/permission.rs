//! Custom permission operations: `AddCustomAuthPermission`,
//! `UpdateCustomAuthPermission`, `DeleteCustomAuthPermission`,
//! `QueryCustomAuthPermission`.
//!
//! A change is committed to the store, put in force, and applied to the
//! live sessions it concerns before the answer: each re-judges its
//! subscriptions under the new policies, and one holding a subscription
//! they no longer allow is closed (MQTT 5: DISCONNECT 0x87), as on a
//! configuration reload.
//!
//! `IdentityType` is `CLIENT` (a client id, as on the platform), or one of
//! certmq's extensions: `DEVICE` (`Identity` = `<CaSn>:<DeviceSn>`) and
//! `CA` (`Identity` = `<CaSn>`). `USER` is refused: devices here prove who
//! they are with certificates and have no user names.

use serde_json::{Map, Value, json};
use tracing::info;

use super::fields;
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::authz::custom::PermissionError;
use crate::authz::live::ChangeError;
use crate::identity::DeviceIdentity;
use crate::record::{
    IdentityKind, KeyError, PermissionKey, PermissionRecord, PermitAction, PermitEffect,
};
use crate::serial::{CaSn, DeviceSn};
use crate::session::table::Scope;

/// At most this many permissions per QueryCustomAuthPermission page.
const MAX_PAGE: usize = 100;

/// A parameter that must be present and non-empty, taken as sent (a
/// topic or client id may begin or end with a space).
fn exact<'a>(req: &'a RpcRequest, name: &'static str) -> Result<&'a str, ApiError> {
    match req.param(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::MissingParameter(name)),
    }
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidParameter {
        name,
        reason: reason.into(),
    }
}

fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

fn identity_kind(raw: &str) -> Result<IdentityKind, ApiError> {
    if raw == "USER" {
        return Err(invalid(
            "IdentityType",
            "USER is not supported: certmq devices prove who they are with certificates and have no user names; \
             use CLIENT (a client id), DEVICE (<CaSn>:<DeviceSn>) or CA (<CaSn>)",
        ));
    }
    IdentityKind::from_api_name(raw).ok_or_else(|| {
        invalid(
            "IdentityType",
            format!(
                "`{}` is not an identity type: use CLIENT, DEVICE or CA",
                shown(raw)
            ),
        )
    })
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Identity(reason) => invalid("Identity", reason),
        KeyError::Topic(reason) => invalid("Topic", reason),
    }
}

fn permission_error(e: PermissionError) -> ApiError {
    match e {
        PermissionError::Key(e) => key_error(e),
        full => invalid("Identity", full.to_string()),
    }
}

/// `IdentityType`, `Identity` and `Topic`, checked and canonical.
fn key(req: &RpcRequest) -> Result<PermissionKey, ApiError> {
    let kind = identity_kind(req.required("IdentityType")?)?;
    let identity = exact(req, "Identity")?;
    let topic = exact(req, "Topic")?;
    PermissionKey::new(kind, identity, topic).map_err(key_error)
}

/// The whole permission of an Add or Update.
fn record(req: &RpcRequest) -> Result<PermissionRecord, ApiError> {
    let key = key(req)?;
    let action = req.required("PermitAction")?;
    let action = PermitAction::from_api_name(action).ok_or_else(|| {
        invalid(
            "PermitAction",
            format!("`{}`: use PUB, SUB or PUB_SUB", shown(action)),
        )
    })?;
    let effect = req.required("Effect")?;
    let effect = PermitEffect::from_api_name(effect)
        .ok_or_else(|| invalid("Effect", format!("`{}`: use ALLOW or DENY", shown(effect))))?;
    Ok(PermissionRecord {
        key,
        action,
        effect,
    })
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Invalid(e) => permission_error(e),
        e @ (ChangeError::Exists | ChangeError::NotFound) => invalid("Topic", e.to_string()),
        ChangeError::Store(e) => ApiError::Internal(e.to_string()),
    }
}

fn success() -> Map<String, Value> {
    fields([
        ("Code", json!(200)),
        ("Message", json!("operation success.")),
        ("Success", json!(true)),
    ])
}

/// Waits until the sessions the permission concerns judge under
/// `generation`; the change itself is already durable and in force.
async fn apply(
    ctx: &Context,
    req: &RpcRequest,
    key: &PermissionKey,
    generation: u64,
) -> Result<Map<String, Value>, ApiError> {
    let device;
    let ca;
    let scope = match key.kind {
        IdentityKind::Client => Scope::Client(&key.identity),
        IdentityKind::Device => {
            let (ca_sn, device_sn) = key.identity.split_once(':').unwrap_or_default();
            device = DeviceIdentity {
                ca_sn: CaSn::parse(ca_sn).map_err(|e| invalid("Identity", e.to_string()))?,
                device_sn: DeviceSn::parse(device_sn)
                    .map_err(|e| invalid("Identity", e.to_string()))?,
            };
            Scope::Device(&device)
        }
        IdentityKind::Ca => {
            ca = CaSn::parse(&key.identity).map_err(|e| invalid("Identity", e.to_string()))?;
            Scope::Ca(&ca)
        }
    };
    let rejudged = ctx
        .sessions
        .rejudged(scope, generation, ctx.settings.drop_timeout())
        .await
        .map_err(|e| {
            ApiError::Internal(format!(
                "the change is stored and in force, but {e}; they are being closed, retry to confirm"
            ))
        })?;
    info!(
        request_id = %req.request_id,
        identity_type = key.kind.api_name(),
        identity = %key.identity,
        topic = %key.topic,
        generation,
        sessions = rejudged.sessions,
        cut_off = rejudged.cut_off,
        "custom permission applied"
    );
    Ok(success())
}

pub(super) async fn add(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let record = record(req)?;
    let key = record.key.clone();
    let generation = ctx.authz.add(record).await.map_err(change_error)?;
    apply(ctx, req, &key, generation).await
}

pub(super) async fn update(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let record = record(req)?;
    let key = record.key.clone();
    let generation = ctx.authz.update(record).await.map_err(change_error)?;
    apply(ctx, req, &key, generation).await
}

pub(super) async fn delete(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let key = key(req)?;
    let generation = ctx.authz.delete(key.clone()).await.map_err(change_error)?;
    apply(ctx, req, &key, generation).await
}

/// The position after a permission, as an opaque `NextToken`.
fn token(key: &PermissionKey) -> String {
    let mut raw = Vec::with_capacity(key.identity.len() + key.topic.len() + 8);
    raw.extend_from_slice(key.kind.api_name().as_bytes());
    raw.push(0);
    raw.extend_from_slice(key.identity.as_bytes());
    raw.push(0);
    raw.extend_from_slice(key.topic.as_bytes());
    hex::encode(raw)
}

fn from_token(token: &str) -> Result<PermissionKey, ApiError> {
    let bad = || {
        invalid(
            "NextToken",
            "not a token this broker answered; start again with an empty NextToken",
        )
    };
    let raw = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\0');
    let (Some(kind), Some(identity), Some(topic)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(PermissionKey {
        kind: IdentityKind::from_api_name(kind).ok_or_else(bad)?,
        identity: identity.to_owned(),
        topic: topic.to_owned(),
    })
}

/// QueryCustomAuthPermission: `Size` (1 to 100) permissions in key order,
/// optionally only those of `IdentityType`, `Identity` and/or `Topic`
/// (exact), from `NextToken` on. `NextToken` in the answer is empty on
/// the last page.
pub(super) fn query(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let raw_size = req.required("Size")?;
    let size = match raw_size.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            return Err(invalid(
                "Size",
                format!(
                    "`{}` is not a whole number from 1 to {MAX_PAGE}",
                    shown(raw_size)
                ),
            ));
        }
    };
    let kind = match req.param("IdentityType").map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(identity_kind(raw)?),
    };
    let identity = req.param("Identity").filter(|v| !v.is_empty());
    let topic = req.param("Topic").filter(|v| !v.is_empty());
    let after = match req.param("NextToken").map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(from_token(raw)?),
    };
    let policies = ctx.authz.current();
    let selected = |r: &&PermissionRecord| {
        kind.is_none_or(|k| r.key.kind == k)
            && identity.is_none_or(|given| {
                r.key.identity == given
                    || PermissionKey::canonical_identity(r.key.kind, given)
                        .is_ok_and(|canonical| canonical == r.key.identity)
            })
            && topic.is_none_or(|t| r.key.topic == t)
    };
    let mut matching = policies.custom().after(after.as_ref()).filter(selected);
    let page: Vec<&PermissionRecord> = matching.by_ref().take(size).collect();
    let next_token = match (page.last(), matching.next()) {
        (Some(last), Some(_)) => token(&last.key),
        _ => String::new(),
    };
    let results: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "Identity": r.key.identity,
                "IdentityType": r.key.kind.api_name(),
                "Topic": r.key.topic,
                "PermitAction": r.action.api_name(),
                "Effect": r.effect.api_name(),
            })
        })
        .collect();
    let mut answer = success();
    answer.insert(
        "Data".into(),
        json!({ "NextToken": next_token, "Results": results }),
    );
    Ok(answer)
}
