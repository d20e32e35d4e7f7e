//! What the broker did, in Prometheus metrics, served at `GET /metrics` on
//! the admin listener (text exposition format).
//!
//! Label values come from fixed sets (refusal reasons, drop reasons, the
//! API's action names and error codes), never from client input, so a
//! hostile client cannot blow up the number of series.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The broker's metrics; cheap to share behind the context.
pub struct Metrics {
    registry: Registry,
    sessions_live: IntGauge,
    connects_accepted: IntCounter,
    handshakes_refused: IntCounterVec,
    refused_after_handshake: IntCounterVec,
    auto_registrations: IntCounter,
    sessions_dropped: IntCounterVec,
    admin_calls: IntCounterVec,
    admin_latency: HistogramVec,
    messages_in: IntCounter,
    messages_out: IntCounter,
    messages_dropped: IntCounterVec,
    authz_denied: IntCounterVec,
    audit_failures: IntCounter,
    audit_suppressed: IntCounter,
    registry_cas: IntGauge,
    registry_devices: IntGauge,
    cluster: ClusterMetrics,
    node_info: prometheus::IntGaugeVec,
    events: crate::events::EventCounters,
    crl: crate::crl::refresh::CrlCounters,
}

/// The metrics of a node sharing a PostgreSQL registry (see `cluster`).
#[derive(Clone)]
pub struct ClusterMetrics {
    /// The number of the last change of the feed this node applied.
    pub applied_seq: IntGauge,
    /// 1 while this node is fenced (no lease, or not caught up).
    pub fenced: IntGauge,
    /// Catch-ups of the change feed, by what started them.
    pub catch_ups: IntCounterVec,
    /// Changes applied from the feed.
    pub changes_applied: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One session counted in `certmq_sessions_live`, until dropped.
pub(crate) struct LiveSession(IntGauge);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The metric definitions are constants: registering them cannot
        // fail except by a programming error, caught by every test run.
        let registry = Registry::new();
        let r = &registry;
        let admin_latency = HistogramVec::new(
            HistogramOpts::new(
                "certmq_admin_call_duration_seconds",
                "Admin API call latency, by action.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["action"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(admin_latency.clone()))
            .expect("unique metric");
        Metrics {
            sessions_live: gauge(
                r,
                "certmq_sessions_live",
                "MQTT sessions open now (after CONNACK).",
            ),
            connects_accepted: counter(
                r,
                "certmq_connects_accepted_total",
                "MQTT connections accepted (CONNACK sent).",
            ),
            handshakes_refused: counter_vec(
                r,
                "certmq_handshakes_refused_total",
                "Connections refused at or right after the TLS handshake, by reason.",
                &["reason"],
            ),
            refused_after_handshake: counter_vec(
                r,
                "certmq_refused_after_handshake_total",
                "Refusals by the post-handshake re-check: the certificate lost its access while its handshake was in \
                 flight, or a resumed TLS session belongs to a certificate without access.",
                &["kind"],
            ),
            auto_registrations: counter(
                r,
                "certmq_auto_registrations_total",
                "Device certificates registered on their first connection.",
            ),
            sessions_dropped: counter_vec(
                r,
                "certmq_sessions_dropped_total",
                "Sessions closed by the broker, by reason (administrative: an admin call removed access).",
                &["reason"],
            ),
            admin_calls: counter_vec(
                r,
                "certmq_admin_calls_total",
                "Admin API calls, by action and result code.",
                &["action", "code"],
            ),
            admin_latency,
            messages_in: counter(
                r,
                "certmq_messages_received_total",
                "PUBLISH packets received from clients.",
            ),
            messages_out: counter(
                r,
                "certmq_messages_sent_total",
                "PUBLISH packets sent to clients.",
            ),
            messages_dropped: counter_vec(
                r,
                "certmq_messages_dropped_total",
                "Messages not delivered to a session, by reason: queue_full (its mailbox held mqtt.max_queued_messages), \
                 too_large (above the client's maximum packet size), expired (message expiry interval), \
                 retained_full (a retained message for a new topic beyond mqtt.max_retained_messages: delivered, not kept).",
                &["reason"],
            ),
            authz_denied: counter_vec(
                r,
                "certmq_authz_denied_total",
                "PUBLISH topics, SUBSCRIBE filters and wills refused by topic authorization, by action.",
                &["action"],
            ),
            audit_failures: counter(
                r,
                "certmq_audit_write_failures_total",
                "Admin calls and CRL refresh imports whose audit record could not be written to audit.jsonl (see the error log).",
            ),
            audit_suppressed: counter(
                r,
                "certmq_audit_records_suppressed_total",
                "Audit records not written for admin calls refused before their signature checked out, beyond 20 a second.",
            ),
            cluster: ClusterMetrics {
                applied_seq: gauge(
                    r,
                    "certmq_cluster_applied_seq",
                    "The number of the last registry change this node applied (PostgreSQL registry).",
                ),
                fenced: gauge(
                    r,
                    "certmq_cluster_fenced",
                    "1 while this node refuses connections: it holds no lease on the shared registry, or has not \
                     caught up with its changes.",
                ),
                catch_ups: counter_vec(
                    r,
                    "certmq_cluster_catch_ups_total",
                    "Reads of the registry's change feed, by trigger: notification, heartbeat (the node found \
                     itself behind without a notification), reconnect.",
                    &["trigger"],
                ),
                changes_applied: counter(
                    r,
                    "certmq_cluster_changes_applied_total",
                    "Registry changes applied from the change feed.",
                ),
            },
            node_info: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "certmq_node_info",
                        "1, labelled with this node's name (cluster.node_id, or the host name).",
                    ),
                    &["node_id"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            events: crate::events::EventCounters {
                published: counter_vec(
                    r,
                    "certmq_events_published_total",
                    "Lifecycle events published under $certmq/events/, by event.",
                    &["event"],
                ),
                dropped: counter_vec(
                    r,
                    "certmq_events_dropped_total",
                    "Lifecycle events not delivered, by reason: backlog (the event queue was full), \
                     subscriber_full (a subscriber's mailbox held mqtt.max_queued_messages), \
                     shutdown (emitted or still queued when the broker stopped).",
                    &["reason"],
                ),
            },
            crl: crate::crl::refresh::CrlCounters {
                failures: counter_vec(
                    r,
                    "certmq_crl_refresh_failures_total",
                    "CRL refreshes ([[tls.crl]]) that failed (fetch, read, verification or import), by CA serial; \
                 the last good CRL stays in force.",
                    &["ca_sn"],
                ),
                refreshed: counter_vec(
                    r,
                    "certmq_crl_refreshes_total",
                    "CRL refreshes ([[tls.crl]]) that succeeded, by CA serial and whether the CRL had changed.",
                    &["ca_sn", "changed"],
                ),
            },
            registry_cas: gauge(r, "certmq_registry_cas", "Registered CA certificates."),
            registry_devices: gauge(
                r,
                "certmq_registry_devices",
                "Registered device certificates.",
            ),
            registry,
        }
    }

    /// The text exposition, with the registry sizes as of now.
    pub fn render(&self, cas: usize, devices: usize) -> String {
        self.registry_cas.set(cas as i64);
        self.registry_devices.set(devices as i64);
        let mut out = Vec::new();
        // Encoding gathered metrics into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts a session in; it counts out when the returned value drops,
    /// on every exit path of its task (a panic included).
    pub(crate) fn session_started(&self) -> LiveSession {
        self.connects_accepted.inc();
        self.sessions_live.inc();
        LiveSession(self.sessions_live.clone())
    }

    /// `reason`: [`crate::session::DropReason::label`].
    pub(crate) fn session_dropped(&self, reason: &'static str) {
        self.sessions_dropped.with_label_values(&[reason]).inc();
    }

    pub(crate) fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_refused.with_label_values(&[reason]).inc();
    }

    pub(crate) fn admission_refused(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "in_flight" };
        self.refused_after_handshake
            .with_label_values(&[kind])
            .inc();
    }

    pub(crate) fn auto_registered(&self) {
        self.auto_registrations.inc();
    }

    pub(crate) fn admin_call(&self, action: &str, code: &str, seconds: f64) {
        self.admin_calls.with_label_values(&[action, code]).inc();
        self.admin_latency
            .with_label_values(&[action])
            .observe(seconds);
    }

    /// The refusal counter of topic authorization, for a session to bump.
    pub(crate) fn authz_denied(&self) -> IntCounterVec {
        self.authz_denied.clone()
    }

    pub(crate) fn event_counters(&self) -> crate::events::EventCounters {
        self.events.clone()
    }

    pub(crate) fn crl_counters(&self) -> crate::crl::refresh::CrlCounters {
        self.crl.clone()
    }

    pub(crate) fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    /// The counter [`Metrics::audit_failed`] raises, for writers of the
    /// audit trail outside the admin API.
    pub(crate) fn audit_failures(&self) -> IntCounter {
        self.audit_failures.clone()
    }

    pub(crate) fn audit_suppressed(&self) {
        self.audit_suppressed.inc();
    }

    /// The PUBLISH counters (received, sent), for a session to bump as it
    /// goes.
    pub(crate) fn message_counters(&self) -> (IntCounter, IntCounter) {
        (self.messages_in.clone(), self.messages_out.clone())
    }

    /// The dropped-message counter, for a session to bump.
    pub(crate) fn messages_dropped(&self) -> IntCounterVec {
        self.messages_dropped.clone()
    }

    /// Names this node in the metrics (`certmq_node_info`); the node id
    /// is checked configuration, not client input.
    pub(crate) fn name_node(&self, node_id: &str) {
        self.node_info.with_label_values(&[node_id]).set(1);
    }

    /// The cluster's metrics, for the cluster's tasks.
    pub(crate) fn cluster(&self) -> ClusterMetrics {
        self.cluster.clone()
    }

    /// Sessions that got CONNACK.
    pub fn sessions_started(&self) -> u64 {
        self.connects_accepted.get()
    }

    /// Connections whose certificate the verifier accepted during the
    /// handshake, refused by the re-check right after it.
    pub fn refused_after_handshake(&self) -> u64 {
        self.refused_after_handshake
            .with_label_values(&["in_flight"])
            .get()
    }

    /// Resumed TLS sessions (no verifier call) refused by the re-check.
    pub fn resumptions_refused(&self) -> u64 {
        self.refused_after_handshake
            .with_label_values(&["resumed"])
            .get()
    }
}
