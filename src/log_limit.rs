//! Rate limits for log lines a client can cause (refused handshakes): a
//! flood of them must not fill the disk. Lines over the limit are counted,
//! and the next line that is written says how many were not.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct LogLimiter {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// At most `per_second` lines a second (bursts of as many).
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        LogLimiter {
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines not written since the last one)` if this line may be
    /// written, `None` if it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_are_counted_not_written() {
        let limiter = LogLimiter::new(3);
        let written: Vec<_> = (0..10).filter_map(|_| limiter.admit()).collect();
        assert_eq!(written, [0, 0, 0]);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 7);
    }
}
