//! Rate limiting per account and action (governor's keyed GCRA limiters):
//! calls beyond the configured rate answer 400 `Throttling.User`.

use std::collections::HashMap;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ops::Operation;
use super::rpc::ApiError;
use crate::config::{ConfigError, invalid};

/// One limiter per operation, keyed by account.
pub struct RateLimits {
    limiters: HashMap<Operation, DefaultKeyedRateLimiter<String>>,
}

impl RateLimits {
    /// From `admin.rate_limits`: action name -> calls per second, with
    /// `default` for the rest.
    pub fn new(config: &HashMap<String, u32>) -> Result<Self, ConfigError> {
        for name in config.keys() {
            if name != "default" && Operation::from_name(name).is_none() {
                return Err(invalid(
                    format!("admin.rate_limits.{name}"),
                    "is not an operation of the certificate API (names are case-sensitive, e.g. InactivateDeviceCertificate)",
                ));
            }
        }
        let default = config.get("default").copied().unwrap_or(500);
        let limiters = Operation::ALL
            .into_iter()
            .map(|op| {
                let rate = config.get(op.name()).copied().unwrap_or(default);
                let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                (op, RateLimiter::keyed(Quota::per_second(rate)))
            })
            .collect();
        Ok(RateLimits { limiters })
    }

    /// Takes one call of `op` for `account`, or refuses it.
    pub fn check(&self, op: Operation, account: &str) -> Result<(), ApiError> {
        match self.limiters.get(&op) {
            Some(limiter) => limiter
                .check_key(&account.to_owned())
                .map_err(|_| ApiError::Throttled),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_rate_per_account_and_action() {
        let config = HashMap::from([
            ("default".to_owned(), 100),
            ("GetCaCertificate".to_owned(), 2),
        ]);
        let limits = RateLimits::new(&config).unwrap();
        assert!(limits.check(Operation::GetCaCertificate, "a").is_ok());
        assert!(limits.check(Operation::GetCaCertificate, "a").is_ok());
        assert_eq!(
            limits.check(Operation::GetCaCertificate, "a"),
            Err(ApiError::Throttled)
        );
        // Another account, another action: their own budgets.
        assert!(limits.check(Operation::GetCaCertificate, "b").is_ok());
        assert!(limits.check(Operation::ListCaCertificate, "a").is_ok());
    }

    #[test]
    fn unknown_action_names_are_configuration_errors() {
        let config = HashMap::from([("inactivatedevicecertificate".to_owned(), 5)]);
        let err = RateLimits::new(&config).err().unwrap().to_string();
        assert!(
            err.contains("admin.rate_limits.inactivatedevicecertificate"),
            "{err}"
        );
    }
}
