//! `GatewayMetrics`: the Prometheus series a gateway exports on `/metrics`.
//!
//! Each mechanism increments its own series (sessions, routing, balancing, delivery); they are
//! gathered here so the set is documented in one place. Label values are static enums, so
//! recording a sample never allocates.

use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// Defines a label-value enum whose exported values are snake_case, as Prometheus
/// conventions expect (the derive would export the Rust variant names). Exported for the
/// crates that register their own series beside the gateway's ([`GatewayMetrics::attach`]).
#[macro_export]
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl $crate::metrics::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut $crate::metrics::prometheus_client::encoding::LabelValueEncoder,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_enum! {
    /// Messaging pattern a message belongs to.
    Pattern { Pub => "pub", Request => "request", Reply => "reply", Stream => "stream" }
}

label_enum! {
    Direction { In => "in", Out => "out" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub pattern: Pattern,
    pub direction: Direction,
}

label_enum! {
    RequestOutcome { Ok => "ok", NoResponders => "no_responders", Timeout => "timeout", ServiceError => "service_error", Cancelled => "cancelled" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: RequestOutcome,
}

label_enum! {
    EjectionReason { ConsecutiveFailures => "consecutive_failures", Latency => "latency" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub reason: EjectionReason,
}

label_enum! {
    SlowConsumerAction { Waited => "waited", Dropped => "dropped", Disconnected => "disconnected" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowConsumerLabels {
    pub action: SlowConsumerAction,
}

label_enum! {
    Limit { MaxPayload => "max_payload", MaxSubscriptions => "max_subscriptions", MaxConnections => "max_connections", MaxPendingRequests => "max_pending_requests", MaxStreams => "max_streams", StreamCredit => "stream_credit" }
}

label_enum! {
    /// Why a connection or session was refused (or closed) before it authenticated.
    AdmissionRefusal {
        /// `limits.max_transport_connections` TCP connections were open.
        TransportTotal => "transport_total",
        /// The peer's address had `limits.max_transport_connections_per_address` open.
        TransportPerAddress => "transport_per_address",
        /// `limits.max_unauthenticated` sessions were waiting for their Hello: the one that
        /// had waited longest was closed to make room.
        UnauthenticatedEvicted => "unauthenticated_evicted",
        /// The peer's address had `limits.max_unauthenticated_per_address` sessions waiting.
        UnauthenticatedPerAddress => "unauthenticated_per_address",
        /// A session sent no Hello within `limits.hello_timeout_ms`.
        HelloTimeout => "hello_timeout",
        /// A connection had no call open for `limits.idle_connection_timeout_ms`.
        IdleConnection => "idle_connection"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub reason: AdmissionRefusal,
}

label_enum! {
    SchemaAction { Warned => "warned", Rejected => "rejected" }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemaLabels {
    pub action: SchemaAction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: Limit,
}

/// Series another crate attached ([`GatewayMetrics::attach`]).
#[derive(Clone, Debug, Default)]
struct Attached(std::sync::Arc<OnceLock<Box<dyn Collector>>>);

impl Collector for Attached {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(c) => c.encode(encoder),
            None => Ok(()),
        }
    }
}

/// Every series the gateway exports.
pub struct GatewayMetrics {
    pub registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Sessions opened over the native transport (`crate::native`); the rest are gRPC.
    pub native_sessions_total: Counter,
    pub subscriptions: Gauge,
    pub messages: Family<TrafficLabels, Counter>,
    pub bytes: Family<TrafficLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub request_duration: Histogram,
    pub balancer_picks: Counter,
    pub balancer_ejections: Family<EjectionLabels, Counter>,
    pub slow_consumer: Family<SlowConsumerLabels, Counter>,
    pub limit_violations: Family<LimitLabels, Counter>,
    pub admission_refusals: Family<AdmissionLabels, Counter>,
    /// Messages refused because their key was over its rate limit, by key id.
    pub key_rate_limited: Family<KeyLabels, Counter>,
    /// For each key with sessions on other gateways of the region: how many gateways share
    /// its rate limits (this one enforces 1/share of them); absent means the whole limit.
    pub key_limit_share: Family<KeyLabels, Gauge>,
    /// Sessions open that have not completed Hello.
    pub unauthenticated_sessions: Gauge,
    /// TCP connections open on the adapter listener.
    pub transport_connections: Gauge,
    pub protocol_errors: Counter,
    /// Batches (gRPC messages) received on adapter sessions: against `messages` it shows how
    /// many frames adapters put in each batch.
    pub batches_received: Counter,
    pub late_replies: Counter,
    pub auth_failures: Counter,
    pub sessions_revoked: Counter,
    /// Sessions told to move to another gateway (`GoAway`) because this one was draining.
    pub goaways_sent: Counter,
    pub schema_violations: Family<SchemaLabels, Counter>,
    pub config_version: Gauge,
    pub config_updates: Counter,
    /// Message trace records kept and evicted, and the bytes they use (`trace_store`).
    pub trace: crate::trace_store::TraceMetrics,
    /// Live-tail taps (`tap`).
    pub tap: crate::tap::TapMetrics,
    /// Compressed payloads (`payload_encoding`).
    pub encoding: crate::payload_encoding::EncodingMetrics,
    /// Series other crates own (federation's links and spool), encoded with these.
    attached: Attached,
    /// Pre-resolved (messages, bytes) counters per pattern and direction, so the hot path is
    /// two atomic adds without the family's lock.
    traffic_counters: [[(Counter, Counter); 2]; 4],
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nexus");
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            native_sessions_total: Counter::default(),
            subscriptions: Gauge::default(),
            messages: Family::default(),
            bytes: Family::default(),
            requests: Family::default(),
            // 50 µs .. ~52 s
            request_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 21)),
            balancer_picks: Counter::default(),
            balancer_ejections: Family::default(),
            slow_consumer: Family::default(),
            limit_violations: Family::default(),
            admission_refusals: Family::default(),
            key_rate_limited: Family::default(),
            key_limit_share: Family::default(),
            unauthenticated_sessions: Gauge::default(),
            transport_connections: Gauge::default(),
            protocol_errors: Counter::default(),
            batches_received: Counter::default(),
            late_replies: Counter::default(),
            auth_failures: Counter::default(),
            sessions_revoked: Counter::default(),
            goaways_sent: Counter::default(),
            schema_violations: Family::default(),
            config_version: Gauge::default(),
            config_updates: Counter::default(),
            trace: Default::default(),
            tap: Default::default(),
            encoding: Default::default(),
            attached: Attached::default(),
            registry: Registry::default(),
            traffic_counters: Default::default(),
        };
        registry.register(
            "connections",
            "Open adapter sessions",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "Adapter sessions opened since start",
            m.connections_total.clone(),
        );
        registry.register(
            "native_sessions_opened",
            "Adapter sessions opened over the native transport (the rest are gRPC)",
            m.native_sessions_total.clone(),
        );
        registry.register(
            "subscriptions",
            "Live subscriptions across all sessions",
            m.subscriptions.clone(),
        );
        registry.register(
            "messages",
            "Messages through the gateway by pattern and direction",
            m.messages.clone(),
        );
        registry.register(
            "payload_bytes",
            "Payload bytes through the gateway by pattern and direction",
            m.bytes.clone(),
        );
        registry.register(
            "requests",
            "Completed requests by outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request entering the gateway to its reply leaving it",
            m.request_duration.clone(),
        );
        registry.register(
            "balancer_picks",
            "Responder or queue member choices made by the balancer",
            m.balancer_picks.clone(),
        );
        registry.register(
            "balancer_ejections",
            "Members ejected by outlier detection, by reason",
            m.balancer_ejections.clone(),
        );
        registry.register(
            "slow_consumer_events",
            "Times a session's outbound queue was full, by the action taken",
            m.slow_consumer.clone(),
        );
        registry.register(
            "limit_violations",
            "Frames or calls refused because they exceeded a configured limit",
            m.limit_violations.clone(),
        );
        registry.register(
            "admission_refusals",
            "Connections and sessions refused or closed before authenticating, by reason",
            m.admission_refusals.clone(),
        );
        registry.register(
            "key_rate_limited",
            "Messages refused because their API key was over its rate limit, by key id",
            m.key_rate_limited.clone(),
        );
        registry.register(
            "key_limit_share",
            "How many gateways of the region divide an API key's rate limits (those where it has sessions), by key id; absent: this gateway enforces the whole limit",
            m.key_limit_share.clone(),
        );
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&nexus_proto::build_info::labels("gateway"))
            .set(1);
        registry.register(
            "build_info",
            "The build of this process (value 1): version, commit, profile and role in the labels",
            build_info,
        );
        registry.register(
            "unauthenticated_sessions",
            "Sessions open that have not completed Hello",
            m.unauthenticated_sessions.clone(),
        );
        registry.register(
            "transport_connections",
            "TCP connections open on the adapter listener",
            m.transport_connections.clone(),
        );
        registry.register(
            "session_batches_received",
            "Batches (gRPC messages) received on adapter sessions; frames per batch is nexus_messages_total{direction=\"in\"} over this",
            m.batches_received.clone(),
        );
        registry.register(
            "protocol_errors",
            "Malformed or out-of-order frames received",
            m.protocol_errors.clone(),
        );
        registry.register(
            "late_replies",
            "Replies that arrived after their request had completed or timed out",
            m.late_replies.clone(),
        );
        registry.register(
            "auth_failures",
            "Sessions refused at Hello for a missing, unknown, revoked, expired or wrong API key",
            m.auth_failures.clone(),
        );
        registry.register(
            "sessions_revoked",
            "Sessions closed because their API key was revoked, expired or deleted",
            m.sessions_revoked.clone(),
        );
        registry.register(
            "goaways_sent",
            "Sessions told to move to another gateway (GoAway) because this one was draining",
            m.goaways_sent.clone(),
        );
        registry.register(
            "schema_violations",
            "Publishes whose payload did not match the subject's enforced schema, by action",
            m.schema_violations.clone(),
        );
        registry.register(
            "config_version",
            "Version of the config snapshot applied (0: none)",
            m.config_version.clone(),
        );
        registry.register(
            "trace_records_kept",
            "Message trace records written (sampled or forced messages, one per hop event)",
            m.trace.kept.clone(),
        );
        registry.register(
            "trace_records_evicted",
            "Message trace records evicted to stay within trace.max_bytes",
            m.trace.evicted.clone(),
        );
        registry.register(
            "trace_bytes",
            "Memory the message trace records use now (bounded by trace.max_bytes)",
            m.trace.bytes.clone(),
        );
        registry.register(
            "tap_messages",
            "Messages a live-tail tap queued for its viewer",
            m.tap.sent.clone(),
        );
        registry.register(
            "tap_dropped",
            "Messages a live-tail tap matched but did not send: over its rate limit, or its viewer too slow (its queue full)",
            m.tap.dropped.clone(),
        );
        registry.register("taps", "Live-tail taps open now", m.tap.open.clone());
        registry.register(
            "config_updates",
            "Config snapshots applied",
            m.config_updates.clone(),
        );
        m.encoding.register(&mut registry);
        registry.register_collector(Box::new(m.attached.clone()));
        let traffic_counters = [
            Pattern::Pub,
            Pattern::Request,
            Pattern::Reply,
            Pattern::Stream,
        ]
        .map(|pattern| {
            [Direction::In, Direction::Out].map(|direction| {
                let labels = TrafficLabels { pattern, direction };
                (
                    m.messages.get_or_create(&labels).clone(),
                    m.bytes.get_or_create(&labels).clone(),
                )
            })
        });
        Self {
            registry,
            traffic_counters,
            ..m
        }
    }

    /// Counts one message of `pattern` crossing the gateway in `direction`.
    #[inline]
    pub fn traffic(&self, pattern: Pattern, direction: Direction, payload_len: usize) {
        let (messages, bytes) = &self.traffic_counters[pattern as usize][direction as usize];
        messages.inc();
        bytes.inc_by(payload_len as u64);
    }

    /// Messages of `pattern` counted so far in `direction`.
    pub fn traffic_count(&self, pattern: Pattern, direction: Direction) -> u64 {
        self.traffic_counters[pattern as usize][direction as usize]
            .0
            .get()
    }

    /// Adds series another crate owns (registered beside its mechanism, e.g. federation's
    /// links and spool) to what `/metrics` shows. Once per gateway; a second call is ignored.
    pub fn attach(&self, collector: Box<dyn Collector>) {
        if self.attached.0.set(collector).is_err() {
            tracing::warn!("a second set of metrics was attached to the gateway; ignoring it");
        }
    }

    pub fn key_rate_limited(&self, key: &str) {
        self.key_rate_limited
            .get_or_create(&KeyLabels {
                key: key.to_owned(),
            })
            .inc();
    }

    pub fn admission_refused(&self, reason: AdmissionRefusal) {
        self.admission_refusals
            .get_or_create(&AdmissionLabels { reason })
            .inc();
    }

    pub fn limit(&self, limit: Limit) {
        self.limit_violations
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn request_done(&self, outcome: RequestOutcome) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
