//! Whether the broker can still do its job: the components it cannot run
//! without (the router's timer, the registry's store writer, the MQTT and
//! admin listeners) are watched, and the first one found dead is
//! recorded here for good.
//!
//! `/readyz` answers 503 naming it, and the broker stops with a non-zero
//! exit (see `Broker::failed`), so that a supervisor such as systemd
//! restarts it instead of leaving a process up that refuses everything.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::registry::Registry;

/// How often the watchdog looks at the store.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The broker's health; cheap to clone, all clones share state.
#[derive(Clone, Default)]
pub struct Health {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The first fatal failure, e.g. "the MQTT listener has stopped".
    failure: OnceLock<String>,
    failed: CancellationToken,
}

impl Health {
    /// Records a fatal failure (the first one wins) and logs it.
    pub fn fail(&self, why: String) {
        if self.shared.failure.set(why.clone()).is_ok() {
            error!(failure = %why, "a component certmq cannot run without has stopped; the broker stops");
            self.shared.failed.cancel();
        }
    }

    /// The fatal failure, if any.
    pub fn failure(&self) -> Option<&str> {
        self.shared.failure.get().map(String::as_str)
    }

    /// Resolves with the fatal failure once there is one.
    pub async fn failed(&self) -> String {
        self.shared.failed.cancelled().await;
        self.failure().unwrap_or_default().to_owned()
    }

    /// A guard for a task the broker cannot run without: if it is dropped
    /// (the task ended, or panicked) before `shutdown`, that is fatal.
    pub fn vital(&self, component: &'static str, shutdown: CancellationToken) -> Vital {
        Vital {
            health: self.clone(),
            component,
            shutdown,
        }
    }
}

/// See [`Health::vital`].
pub struct Vital {
    health: Health,
    component: &'static str,
    shutdown: CancellationToken,
}

impl Drop for Vital {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            self.health
                .fail(format!("the {} has stopped", self.component));
        }
    }
}

/// Watches the registry's store writer until `shutdown`.
pub async fn watch(health: Health, registry: Registry, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if !registry.store_running() {
            health.fail(format!(
                "the registry store writer ({}) has stopped",
                registry.location()
            ));
            return;
        }
    }
}
