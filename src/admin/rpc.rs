//! The RPC dialect of the ApsaraMQ for MQTT API: parameters, errors and
//! response envelopes, independent of any one operation.
//!
//! A call is `GET` or `POST /`, parameters in the query string or an
//! `application/x-www-form-urlencoded` body, the operation named by the
//! `Action` parameter or the `x-acs-action` header. Every answer is JSON
//! with a fresh upper-case UUID `RequestId`; errors carry the platform's
//! `Code`, `Message` and HTTP status.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::serial::SerialError;

/// One admin request, parsed.
#[derive(Debug)]
pub struct RpcRequest {
    pub request_id: String,
    pub action: Option<String>,
    pub host: String,
    params: HashMap<String, String>,
}

impl RpcRequest {
    /// Collects parameters from the query string, then the form body (a
    /// parameter in both takes the body's value).
    pub fn parse(
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        fallback_host: &str,
    ) -> Result<Self, (String, ApiError)> {
        let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
        let mut params = HashMap::new();
        let bad = |what: &str, e: serde_urlencoded::de::Error| {
            ApiError::Malformed(format!("{what} is not valid URL encoding: {e}"))
        };
        if let Some(q) = query {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
                .map_err(|e| (request_id.clone(), bad("the query string", e)))?;
            params.extend(pairs);
        }
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form && !body.is_empty() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| (request_id.clone(), bad("the form body", e)))?;
            params.extend(pairs);
        }
        let action = headers
            .get("x-acs-action")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| params.get("Action").cloned());
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(fallback_host)
            .to_owned();
        Ok(RpcRequest {
            request_id,
            action,
            host,
            params,
        })
    }

    /// A parameter that must be present and non-empty.
    pub fn required(&self, name: &'static str) -> Result<&str, ApiError> {
        match self.params.get(name).map(|v| v.trim()) {
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
    #[error("The instance {0} does not exist on this broker.")]
    InstanceNotFound(String),
    #[error("No device certificate with CaSn {ca_sn} and DeviceSn {device_sn} exists.")]
    DeviceNotFound { ca_sn: String, device_sn: String },
    #[error("No CA certificate with Sn {0} exists.")]
    CaNotFound(String),
    #[error("The action {0} is not supported by this broker.")]
    UnknownAction(String),
    #[error("The request names no action: set the Action parameter or the x-acs-action header.")]
    MissingAction,
    #[error("Internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingParameter(_)
            | ApiError::InvalidParameter { .. }
            | ApiError::Malformed(_) => "ParameterFieldCheckFailed",
            ApiError::InstanceNotFound(_) => "MqttInstanceNotFound",
            ApiError::DeviceNotFound { .. } => "FindDeviceBySnError",
            ApiError::CaNotFound(_) => "FindCaBySnError",
            ApiError::UnknownAction(_) => "InvalidAction.NotFound",
            ApiError::MissingAction => "MissingAction",
            ApiError::Internal(_) => "InternalError",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingParameter(_)
            | ApiError::InvalidParameter { .. }
            | ApiError::Malformed(_)
            | ApiError::MissingAction => StatusCode::BAD_REQUEST,
            ApiError::UnknownAction(_) => StatusCode::NOT_FOUND,
            ApiError::InstanceNotFound(_)
            | ApiError::DeviceNotFound { .. }
            | ApiError::CaNotFound(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
