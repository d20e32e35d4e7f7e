//! Authorization: may this caller's access key perform this operation.
//!
//! An access key lists action patterns in the RAM style: `mq:*`,
//! `mq:Get*`, `mq:InactivateDeviceCertificate`, `*`. `*` matches any run of
//! characters; names compare case-insensitively, as RAM does.

use super::auth::Caller;
use super::ops::Operation;
use super::rpc::ApiError;

/// Whether `caller` may run `op`.
pub fn authorize(caller: &Caller, op: Operation) -> Result<(), ApiError> {
    let allowed = op.ram_actions().iter().any(|action| {
        caller
            .actions
            .iter()
            .any(|pattern| matches(pattern, action))
    });
    if allowed {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(format!("mq:{}", op.name())))
    }
}

/// Glob matching with `*`, ASCII case-insensitive.
fn matches(pattern: &str, text: &str) -> bool {
    crate::glob::matches(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn caller(actions: &[&str]) -> Caller {
        Caller {
            access_key_id: "k".into(),
            account: "a".into(),
            actions: actions
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", "mq:GetCaCertificate"));
        assert!(matches("mq:*", "mq:GetCaCertificate"));
        assert!(matches("mq:Get*", "mq:GetCaCertificate"));
        assert!(matches("MQ:get*certificate", "mq:GetCaCertificate"));
        assert!(matches("mq:*Ca*", "mq:DeleteCaCertificate"));
        assert!(!matches("mq:Get*", "mq:DeleteCaCertificate"));
        assert!(!matches("mq:Get", "mq:GetCaCertificate"));
        assert!(!matches("mq:*Device", "mq:GetDeviceCertificate"));
        assert!(!matches("mq:ab*ab", "mq:ab"));
    }

    #[test]
    fn inactivation_accepts_the_documented_alias() {
        let c = caller(&["mq:UnregisterDeviceCertificate"]);
        assert!(authorize(&c, Operation::InactivateDeviceCertificate).is_ok());
        assert!(authorize(&c, Operation::ActiveDeviceCertificate).is_err());
        let _ = Arc::new(());
    }

    #[test]
    fn denial_names_the_action() {
        let err = authorize(&caller(&["mq:Get*"]), Operation::DeleteCaCertificate).unwrap_err();
        assert_eq!(err.code(), "PermissionCheckFailed");
        assert!(err.to_string().contains("mq:DeleteCaCertificate"));
    }
}
