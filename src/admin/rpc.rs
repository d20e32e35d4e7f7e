//! The RPC dialect of the ApsaraMQ for MQTT API: parameters, errors and
//! response envelopes, independent of any one operation.
//!
//! A call is `GET` or `POST /`, parameters in the query string or an
//! `application/x-www-form-urlencoded` body, the operation named by the
//! signed `x-acs-action` header (V3) or the `Action` parameter (V1): which
//! one counts is decided with the signature, in `auth`. Every answer is JSON
//! with a fresh upper-case UUID `RequestId`; errors carry the platform's
//! `Code`, `Message` and HTTP status.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::serial::SerialError;

/// One admin request, as received.
#[derive(Debug)]
pub struct RpcRequest {
    pub request_id: String,
    pub host: String,
    method: String,
    path: String,
    query: Vec<(String, String)>,
    /// Query parameters, then form body parameters, in arrival order.
    params: Vec<(String, String)>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl RpcRequest {
    /// Reads parameters from the query string and, for form posts, the body.
    pub fn parse(
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: Vec<u8>,
        fallback_host: &str,
    ) -> Result<Self, (String, ApiError)> {
        let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
        let bad = |what: &str, e: serde_urlencoded::de::Error| {
            (
                request_id.clone(),
                ApiError::Malformed(format!("{what} is not valid URL encoding: {e}")),
            )
        };
        let query: Vec<(String, String)> = match query {
            Some(q) => serde_urlencoded::from_str(q).map_err(|e| bad("the query string", e))?,
            None => Vec::new(),
        };
        let mut params = query.clone();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form && !body.is_empty() {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).map_err(|e| bad("the form body", e))?;
            params.extend(form);
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(fallback_host)
            .to_owned();
        Ok(RpcRequest {
            request_id,
            host,
            method: method.to_owned(),
            path: path.to_owned(),
            query,
            params,
            headers,
            body,
        })
    }

    /// The operation the request *claims*, before its signature is checked:
    /// for metrics and audit records of refused calls only. What runs is
    /// decided by [`super::auth::Authenticated::action`], taken from the
    /// signed part of the request.
    pub fn claimed_action(&self) -> Option<&str> {
        self.header("x-acs-action").or_else(|| self.param("Action"))
    }

    /// Every value of a parameter, in arrival order.
    pub fn param_values(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of a parameter (a body value wins over the query).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be present and non-empty.
    pub fn required(&self, name: &'static str) -> Result<&str, ApiError> {
        match self.param(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::MissingParameter(name)),
        }
    }

    /// A serial-number parameter (`CaSn`, `DeviceSn`, `Sn`).
    pub fn serial<T>(
        &self,
        name: &'static str,
        parse: fn(&str) -> Result<T, SerialError>,
    ) -> Result<T, ApiError> {
        let raw = self.required(name)?;
        parse(raw).map_err(|e| ApiError::InvalidParameter {
            name,
            reason: e.to_string(),
        })
    }

    /// Values of a repeated parameter `Name.1`, `Name.2`, ... in order.
    pub fn list(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}.");
        let mut items: Vec<(usize, &str)> = self
            .params
            .iter()
            .filter_map(|(k, v)| {
                let index = k.strip_prefix(&prefix)?.parse::<usize>().ok()?;
                Some((index, v.as_str()))
            })
            .collect();
        items.sort_by_key(|(i, _)| *i);
        items.into_iter().map(|(_, v)| v).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header (for V3 canonical headers).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    pub fn all_params(&self) -> &[(String, String)] {
        &self.params
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A success answer: `fields` plus `RequestId`.
    pub fn ok(&self, mut fields: serde_json::Map<String, Value>) -> Response {
        fields.insert("RequestId".into(), Value::String(self.request_id.clone()));
        json_response(StatusCode::OK, Value::Object(fields))
    }

    /// An error answer in the platform's envelope.
    pub fn error(&self, error: &ApiError) -> Response {
        error_response(&self.request_id, &self.host, error)
    }
}

/// The platform's error codes that certmq answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("The required parameter {0} is missing or empty.")]
    MissingParameter(&'static str),
    #[error("The parameter {name} is invalid: {reason}.")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("The request is malformed: {0}.")]
    Malformed(String),
    #[error(
        "The request is not signed: send an Authorization header (ACS3-HMAC-SHA256) or the AccessKeyId and Signature parameters (HMAC-SHA1)."
    )]
    MissingAccessKeyId,
    #[error("Specified access key is not found: {0}.")]
    AccessKeyNotFound(String),
    #[error(
        "The request signature does not match. Check the AccessKeySecret and the signing method. {0}"
    )]
    SignatureDoesNotMatch(String),
    #[error("The request signature is incomplete: {0}.")]
    IncompleteSignature(String),
    #[error("The request has no timestamp (x-acs-date header or Timestamp parameter).")]
    MissingTimestamp,
    #[error("The timestamp {0} is not an ISO 8601 UTC time such as 2026-11-26T01:02:03Z.")]
    TimestampFormat(String),
    #[error("The timestamp is outside the allowed window of 15 minutes; check the caller's clock.")]
    TimestampExpired,
    #[error(
        "The request has no signature nonce (x-acs-signature-nonce header or SignatureNonce parameter)."
    )]
    MissingNonce,
    #[error("The signature nonce has been used before; every request needs a fresh one.")]
    NonceUsed,
    #[error("You are not authorized to perform {0}: the access key's actions do not allow it.")]
    PermissionDenied(String),
    #[error("The instance {0} does not belong to the caller's account.")]
    OwnerCheck(String),
    #[error(
        "The instance edition {0} does not support certificate operations; they need the platinum edition."
    )]
    Edition(String),
    #[error("Request was denied due to user flow control.")]
    Throttled,
    #[error("The instance {0} does not exist on this broker.")]
    InstanceNotFound(String),
    #[error("No device certificate with CaSn {ca_sn} and DeviceSn {device_sn} exists.")]
    DeviceNotFound { ca_sn: String, device_sn: String },
    #[error("No CA certificate with Sn {0} exists.")]
    CaNotFound(String),
    #[error("The CA certificate cannot be registered: {0}.")]
    RegistrationRefused(String),
    #[error("The action {0} is not supported by this broker.")]
    UnknownAction(String),
    #[error(
        "The request names no action: sign the x-acs-action header (ACS3-HMAC-SHA256) or send the Action parameter (HMAC-SHA1)."
    )]
    MissingAction,
    #[error(
        "The request names its {what} twice, differently: {signed} (signed) and {other}. Send it once: the x-acs-{what} header for ACS3-HMAC-SHA256, the {param} parameter for HMAC-SHA1."
    )]
    Conflicting {
        what: &'static str,
        param: &'static str,
        signed: String,
        other: String,
    },
    #[error("The API version {0} is not supported: this broker serves version 2020-04-20.")]
    UnsupportedVersion(String),
    #[error("Internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingParameter(_)
            | ApiError::InvalidParameter { .. }
            | ApiError::Malformed(_)
            | ApiError::RegistrationRefused(_)
            | ApiError::Conflicting { .. } => "ParameterFieldCheckFailed",
            ApiError::MissingAccessKeyId => "MissingAccessKeyId",
            ApiError::AccessKeyNotFound(_) => "InvalidAccessKeyId.NotFound",
            ApiError::SignatureDoesNotMatch(_) => "SignatureDoesNotMatch",
            ApiError::IncompleteSignature(_) => "IncompleteSignature",
            ApiError::MissingTimestamp => "MissingTimestamp",
            ApiError::TimestampFormat(_) => "InvalidTimeStamp.Format",
            ApiError::TimestampExpired => "InvalidTimeStamp.Expired",
            ApiError::MissingNonce => "MissingSignatureNonce",
            ApiError::NonceUsed => "SignatureNonceUsed",
            ApiError::PermissionDenied(_) => "PermissionCheckFailed",
            ApiError::OwnerCheck(_) => "MqttOwnerCheckError",
            ApiError::Edition(_) => "InstancePermissionCheckFailed",
            ApiError::Throttled => "Throttling.User",
            ApiError::InstanceNotFound(_) => "MqttInstanceNotFound",
            ApiError::DeviceNotFound { .. } => "FindDeviceBySnError",
            ApiError::CaNotFound(_) => "FindCaBySnError",
            ApiError::UnknownAction(_) => "InvalidAction.NotFound",
            ApiError::MissingAction => "MissingAction",
            ApiError::UnsupportedVersion(_) => "InvalidVersion",
            ApiError::Internal(_) => "InternalError",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::AccessKeyNotFound(_) | ApiError::UnknownAction(_) => StatusCode::NOT_FOUND,
            ApiError::PermissionDenied(_) | ApiError::OwnerCheck(_) => StatusCode::FORBIDDEN,
            ApiError::InstanceNotFound(_)
            | ApiError::DeviceNotFound { .. }
            | ApiError::CaNotFound(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

pub fn error_response(request_id: &str, host: &str, error: &ApiError) -> Response {
    let body = json!({
        "RequestId": request_id,
        "HostId": host,
        "Code": error.code(),
        "Message": error.to_string(),
        "Recommend": "",
    });
    json_response(error.status(), body)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}
