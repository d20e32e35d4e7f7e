//! The operations of the certificate API family, and what each requires.
//!
//! Every operation runs after authentication, authorization and rate
//! limiting (see `admin`). Each first checks the instance it names
//! ([`check_instance`]), then its own parameters, then acts. Operations that
//! remove access follow one order: registry first, then the session drop,
//! then the answer.

mod ca;
mod crl;
mod device;
mod permission;
mod session;

use serde_json::{Map, Value};

use super::auth::Caller;
use super::rpc::{ApiError, RpcRequest};
use crate::Context;
use crate::events::{Change, Event};
use crate::registry::CertStatus;
use crate::serial::CaSn;

/// One admin API operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetRegisterCode,
    RegisterCaCertificate,
    GetCaCertificate,
    ListCaCertificate,
    ActiveCaCertificate,
    InactivateCaCertificate,
    DeleteCaCertificate,
    GetDeviceCertificate,
    ListDeviceCertificate,
    ListDeviceCertificateByCaSn,
    ActiveDeviceCertificate,
    InactivateDeviceCertificate,
    DeleteDeviceCertificate,
    CloseConnection,
    QuerySessionByClientId,
    BatchQuerySessionByClientIds,
    AddCustomAuthPermission,
    UpdateCustomAuthPermission,
    DeleteCustomAuthPermission,
    QueryCustomAuthPermission,
    /// certmq's extension: a CRL's serials become inactive.
    ImportCrl,
}

use Operation::*;

impl Operation {
    pub const ALL: [Operation; 21] = [
        GetRegisterCode,
        RegisterCaCertificate,
        GetCaCertificate,
        ListCaCertificate,
        ActiveCaCertificate,
        InactivateCaCertificate,
        DeleteCaCertificate,
        GetDeviceCertificate,
        ListDeviceCertificate,
        ListDeviceCertificateByCaSn,
        ActiveDeviceCertificate,
        InactivateDeviceCertificate,
        DeleteDeviceCertificate,
        CloseConnection,
        QuerySessionByClientId,
        BatchQuerySessionByClientIds,
        AddCustomAuthPermission,
        UpdateCustomAuthPermission,
        DeleteCustomAuthPermission,
        QueryCustomAuthPermission,
        ImportCrl,
    ];

    /// The action name of the API.
    pub fn name(self) -> &'static str {
        match self {
            GetRegisterCode => "GetRegisterCode",
            RegisterCaCertificate => "RegisterCaCertificate",
            GetCaCertificate => "GetCaCertificate",
            ListCaCertificate => "ListCaCertificate",
            ActiveCaCertificate => "ActiveCaCertificate",
            InactivateCaCertificate => "InactivateCaCertificate",
            DeleteCaCertificate => "DeleteCaCertificate",
            GetDeviceCertificate => "GetDeviceCertificate",
            ListDeviceCertificate => "ListDeviceCertificate",
            ListDeviceCertificateByCaSn => "ListDeviceCertificateByCaSn",
            ActiveDeviceCertificate => "ActiveDeviceCertificate",
            InactivateDeviceCertificate => "InactivateDeviceCertificate",
            DeleteDeviceCertificate => "DeleteDeviceCertificate",
            CloseConnection => "CloseConnection",
            QuerySessionByClientId => "QuerySessionByClientId",
            BatchQuerySessionByClientIds => "BatchQuerySessionByClientIds",
            AddCustomAuthPermission => "AddCustomAuthPermission",
            UpdateCustomAuthPermission => "UpdateCustomAuthPermission",
            DeleteCustomAuthPermission => "DeleteCustomAuthPermission",
            QueryCustomAuthPermission => "QueryCustomAuthPermission",
            ImportCrl => "ImportCrl",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The RAM actions any one of which allows the operation.
    pub fn ram_actions(self) -> Vec<String> {
        let mut actions = vec![format!("mq:{}", self.name())];
        if self == InactivateDeviceCertificate {
            // The operation's documentation lists this action.
            actions.push("mq:UnregisterDeviceCertificate".into());
        }
        actions
    }

    /// Whether the operation changes state (and so is audited).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            RegisterCaCertificate
                | ActiveCaCertificate
                | InactivateCaCertificate
                | DeleteCaCertificate
                | ActiveDeviceCertificate
                | InactivateDeviceCertificate
                | DeleteDeviceCertificate
                | CloseConnection
                | AddCustomAuthPermission
                | UpdateCustomAuthPermission
                | DeleteCustomAuthPermission
                | ImportCrl
        )
    }

    /// Certificate operations need the platinum edition.
    pub fn is_certificate_operation(self) -> bool {
        !matches!(
            self,
            CloseConnection
                | QuerySessionByClientId
                | BatchQuerySessionByClientIds
                | AddCustomAuthPermission
                | UpdateCustomAuthPermission
                | DeleteCustomAuthPermission
                | QueryCustomAuthPermission
        )
    }

    /// The parameter naming the instance: session and permission
    /// operations use `InstanceId`, certificate operations
    /// `MqttInstanceId`.
    pub fn instance_param(self) -> &'static str {
        if self.is_certificate_operation() {
            "MqttInstanceId"
        } else {
            "InstanceId"
        }
    }
}

/// The instance must exist here, belong to the caller's account, and (for
/// certificate operations) be of the platinum edition.
fn check_instance(
    ctx: &Context,
    caller: &Caller,
    op: Operation,
    req: &RpcRequest,
) -> Result<(), ApiError> {
    let param = op.instance_param();
    let instance = req.param(param).map(str::trim).unwrap_or_default();
    if instance.is_empty() {
        return Err(ApiError::MissingParameter(param));
    }
    if instance != ctx.instance.id {
        return Err(ApiError::InstanceNotFound(
            instance.chars().take(64).collect(),
        ));
    }
    if caller.account != ctx.instance.owner {
        return Err(ApiError::OwnerCheck(instance.to_owned()));
    }
    if op.is_certificate_operation() && !ctx.instance.supports_certificates() {
        return Err(ApiError::Edition(ctx.instance.edition.clone()));
    }
    Ok(())
}

/// Runs an authorized operation.
pub(crate) async fn run(
    ctx: &Context,
    caller: &Caller,
    op: Operation,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    check_instance(ctx, caller, op, req)?;
    let outcome = dispatch(ctx, caller, op, req).await;
    // A call that changed the registry but then failed to close every
    // session in time (it says so, and may be retried) changed the
    // status all the same: the event goes out for it too.
    let changed = outcome.is_ok() || status_applied(ctx, op, req);
    if changed && let Some(event) = status_event(op, req, outcome.as_ref().ok(), caller) {
        ctx.events.emit_waiting(event).await;
    }
    outcome
}

/// Whether the registry now holds what a failed status call asked for.
fn status_applied(ctx: &Context, op: Operation, req: &RpcRequest) -> bool {
    let device = || device::identity(req).ok();
    let ca = || ca::ca_sn(req).ok();
    match op {
        InactivateDeviceCertificate => {
            device().is_some_and(|id| ctx.registry.device_status(&id) == Some(CertStatus::Inactive))
        }
        DeleteDeviceCertificate => {
            device().is_some_and(|id| ctx.registry.device_status(&id).is_none())
        }
        InactivateCaCertificate => {
            ca().is_some_and(|sn| ctx.registry.ca_status(&sn) == Some(CertStatus::Inactive))
        }
        DeleteCaCertificate => ca().is_some_and(|sn| ctx.registry.ca_status(&sn).is_none()),
        _ => false,
    }
}

async fn dispatch(
    ctx: &Context,
    caller: &Caller,
    op: Operation,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    match op {
        GetRegisterCode => ca::get_register_code(ctx),
        RegisterCaCertificate => ca::register(ctx, req).await,
        GetCaCertificate => ca::get(ctx, req),
        ListCaCertificate => ca::list(ctx, req),
        ActiveCaCertificate => ca::activate(ctx, req).await,
        InactivateCaCertificate => ca::inactivate(ctx, req).await,
        DeleteCaCertificate => ca::delete(ctx, req).await,
        GetDeviceCertificate => device::get(ctx, req).await,
        ListDeviceCertificate => device::list(ctx, req, false).await,
        ListDeviceCertificateByCaSn => device::list(ctx, req, true).await,
        ActiveDeviceCertificate => device::activate(ctx, req).await,
        InactivateDeviceCertificate => device::inactivate(ctx, req).await,
        DeleteDeviceCertificate => device::delete(ctx, req).await,
        CloseConnection => session::close(ctx, req).await,
        QuerySessionByClientId => session::query(ctx, req).await,
        BatchQuerySessionByClientIds => session::batch_query(ctx, req).await,
        AddCustomAuthPermission => permission::add(ctx, req).await,
        UpdateCustomAuthPermission => permission::update(ctx, req).await,
        DeleteCustomAuthPermission => permission::delete(ctx, req).await,
        QueryCustomAuthPermission => permission::query(ctx, req),
        ImportCrl => crl::import(ctx, caller, req).await,
    }
}

/// The lifecycle event of a successful call that changed a certificate's
/// status (ImportCrl emits its own, one per serial).
fn status_event(
    op: Operation,
    req: &RpcRequest,
    answer: Option<&Map<String, Value>>,
    caller: &Caller,
) -> Option<Event> {
    let change = || Change {
        by: caller.access_key_id.clone(),
        via: "api",
        request_id: Some(req.request_id.clone()),
    };
    let device = |status| {
        device::identity(req)
            .ok()
            .map(|device| Event::DeviceStatus {
                device,
                status,
                change: change(),
            })
    };
    let ca = |ca_sn: Option<CaSn>, status| {
        ca_sn.map(|ca_sn| Event::CaStatus {
            ca_sn,
            status,
            change: change(),
        })
    };
    match op {
        ActiveDeviceCertificate => device("active"),
        InactivateDeviceCertificate => device("inactive"),
        DeleteDeviceCertificate => device("deleted"),
        ActiveCaCertificate => ca(ca::ca_sn(req).ok(), "active"),
        InactivateCaCertificate => ca(ca::ca_sn(req).ok(), "inactive"),
        DeleteCaCertificate => ca(ca::ca_sn(req).ok(), "deleted"),
        RegisterCaCertificate => ca(
            answer?
                .get("Sn")
                .and_then(Value::as_str)
                .and_then(|sn| sn.parse().ok()),
            "registered",
        ),
        _ => None,
    }
}

/// Discards the router's stored session of a client id (its
/// subscriptions, queued messages and pending will); always done: the
/// router is in memory.
async fn forget_session(ctx: &Context, client_id: std::sync::Arc<str>) -> bool {
    ctx.hub.forget(&client_id);
    true
}

/// `PageNo` (from 1, default 1) and `PageSize` (1 to 100, default 10), as
/// `(page_no, page_size, offset)`.
fn paging(req: &RpcRequest) -> Result<(usize, usize, usize), ApiError> {
    let number = |name: &'static str, default: usize, max: usize| -> Result<usize, ApiError> {
        match req.param(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::InvalidParameter {
                    name,
                    reason: format!(
                        "`{}` is not a whole number from 1 to {max}",
                        raw.chars().take(20).collect::<String>()
                    ),
                }),
            },
        }
    };
    let page_no = number("PageNo", 1, 1_000_000)?;
    let page_size = number("PageSize", 10, 100)?;
    Ok((page_no, page_size, (page_no - 1) * page_size))
}

/// The answer's fields, built from pairs.
fn fields(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
