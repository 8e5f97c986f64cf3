//! The data the pages show, shared by the server (which fills it from the Admin API and the
//! gateways' `/v1/status`) and the browser (which receives it serialized, at hydration and over
//! the topology event stream). Plain serde types: nothing here does I/O.

use serde::{Deserialize, Serialize};

// === gateway status (the gateways' `GET /v1/status` contract) ===

/// What a gateway reports at `GET http://<metrics_addr>/v1/status`. Every field has a default
/// so that a gateway reporting less (an older version) still parses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayStatus {
    pub gateway_id: String,
    pub region: String,
    pub uptime_s: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub messages: MessageCounts,
    /// Top subjects by subscribers.
    pub subjects: Vec<SubjectStat>,
    pub balancer: Vec<BalancerGroup>,
    pub links: Vec<LinkStatus>,
    /// Links to the other gateways of its region (its cluster).
    pub cluster: Vec<ClusterPeerStatus>,
    pub routes: Vec<RouteStatus>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageCounts {
    pub published: u64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubjectStat {
    pub pattern: String,
    pub subscribers: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerGroup {
    pub subject: String,
    pub group: String,
    pub members: Vec<BalancerMember>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerMember {
    pub session: String,
    pub cost_us: f64,
    pub in_flight: u64,
    pub ejected: bool,
}

/// A cluster link to another gateway of the same region, as the reporting gateway sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterPeerStatus {
    pub gateway_id: String,
    pub rtt_ms: f64,
    /// Best-effort messages queued on the link, confirmed by the peer, and received from it.
    pub forwarded: u64,
    pub confirmed: u64,
    pub received: u64,
}

/// One federation link as seen from the reporting gateway's side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    /// The region at the other end.
    pub region: String,
    /// `up` or `down`.
    pub state: String,
    /// The gateway of that region this gateway's traffic goes through (its home there).
    pub via: Option<String>,
    pub rtt_ms: Option<f64>,
    /// Best-effort messages queued on the link, confirmed by the other region, and still in
    /// flight (queued or sent, not confirmed).
    pub forwarded: u64,
    pub confirmed: u64,
    pub unconfirmed: u64,
    /// Best-effort messages that did not reach the other region, and why (`link_down`,
    /// `queue_full`, `link_lost`).
    pub dropped: u64,
    pub dropped_by_reason: std::collections::BTreeMap<String, u64>,
    pub received: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteStatus {
    pub route: String,
    pub consistency: String,
    pub spool_depth: u64,
    pub replication_lag_ms: Option<f64>,
}

// === topology (the map) ===

/// Health of a gateway, a region or a link, as drawn on the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Up,
    Down,
    /// Nothing says either way (e.g. the gateways do not report links yet).
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

/// One snapshot of the whole system, as pushed to open topology pages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologyView {
    pub regions: Vec<RegionView>,
    pub links: Vec<LinkView>,
    pub config_version: i64,
    /// Wall-clock time of the poll (UTC, formatted on the server).
    pub polled_at: String,
    /// Problems reaching the control plane (empty when it answered).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionView {
    pub name: String,
    pub health: Health,
    pub gateways: Vec<GatewayView>,
    pub msgs_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayView {
    pub id: String,
    pub region: String,
    pub adapter_addr: String,
    pub metrics_addr: String,
    pub federation_addr: String,
    pub config_version: i64,
    pub health: Health,
    /// Whether the gateway serves `/v1/status` (false: only liveness is known).
    pub has_status: bool,
    /// Why it is not healthy, when it is not.
    pub problem: Option<String>,
    pub sessions: u64,
    pub subscriptions: u64,
    pub uptime_s: u64,
    pub published_per_s: f64,
    pub delivered_per_s: f64,
}

/// A federation link between two regions (`a` < `b`), merged from both ends' reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub a: String,
    pub b: String,
    pub health: Health,
    pub rtt_ms: Option<f64>,
    pub msgs_per_s: f64,
    /// Best-effort messages dropped by both ends, and how many of them were lost in flight
    /// (queued or sent on a link that ended before the other region confirmed them).
    pub dropped: u64,
    pub lost_in_flight: u64,
    /// Best-effort messages on the link now, not yet confirmed by the other end.
    pub unconfirmed: u64,
    /// Why it is drawn the way it is.
    pub note: String,
}

impl LinkView {
    /// The DOM id of the link on the map.
    pub fn dom_id(&self) -> String {
        format!("link-{}-{}", self.a, self.b)
    }
}

/// Everything the region page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionDetail {
    pub region: RegionView,
    pub links: Vec<LinkView>,
    /// Per gateway: its full status, when it reports one.
    pub statuses: Vec<(String, Option<GatewayStatus>)>,
}

// === routes ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    pub name: String,
    pub subjects: Vec<String>,
    /// e.g. `local_first`, `pinned(eu-west)`, `weighted(a=1,b=2)`.
    pub policy: String,
    pub failover: Vec<String>,
    /// e.g. `best_effort`, `sync(quorum 2)`.
    pub consistency: String,
    pub description: String,
    pub version: i64,
    pub updated: String,
    /// Measured at the gateways (max over those that report the route).
    pub replication_lag_ms: Option<f64>,
    pub spool_depth: Option<u64>,
    /// How many gateways report measurements for this route.
    pub reporting_gateways: usize,
}

/// Values of the route form, kept across a failed submission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteForm {
    pub name: String,
    pub subjects: String,
    pub policy: String,
    pub pinned_region: String,
    pub weights: String,
    pub failover: String,
    pub consistency: String,
    pub sync_quorum: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutesPage {
    pub routes: Vec<RouteRow>,
    pub regions: Vec<String>,
    pub csrf: String,
    pub flash: Option<Flash>,
}

// === schemas ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaSubjectRow {
    pub subject: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
    pub format: String,
    pub compatibility: String,
    pub enforcement: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemasPage {
    pub subjects: Vec<SchemaSubjectRow>,
    pub default_compatibility: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersionView {
    pub version: u32,
    pub format: String,
    pub message: String,
    pub created: String,
    /// JSON Schema: the document, pretty-printed. Protobuf: a one-line summary.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaSubjectPage {
    pub subject: SchemaSubjectRow,
    pub versions: Vec<SchemaVersionView>,
    pub csrf: String,
    pub flash: Option<Flash>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub compatible: bool,
    pub mode: String,
    /// (path, reason, version)
    pub incompatibilities: Vec<(String, String, u32)>,
}

// === keys ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub admin: bool,
    pub created: String,
    pub expires: String,
    pub revoked: bool,
    /// While a rotation overlaps: until when the previous secret still works.
    pub previous_valid_until: Option<String>,
    pub version: i64,
    /// The key's rate limits (all zero: unlimited).
    pub limits: KeyLimitsForm,
    /// The certificate binding: SHA-256 fingerprints and DNS names (both empty: none).
    pub cert_sha256: Vec<String>,
    pub cert_names: Vec<String>,
}

/// A key's rate limits as the Admin API's `KeyLimits` has them; 0 = unlimited (for a burst:
/// one second's worth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimitsForm {
    pub msgs_per_sec: u32,
    pub burst_msgs: u32,
    pub bytes_per_sec: u64,
    pub burst_bytes: u64,
}

impl KeyLimitsForm {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// "100 msgs/s (burst 200), 1048576 bytes/s (burst: 1 s)", or "unlimited".
    pub fn describe(&self) -> String {
        if self.is_unlimited() {
            return "unlimited".into();
        }
        let part = |rate: u64, burst: u64, unit: &str| {
            if rate == 0 {
                format!("{unit}/s unlimited")
            } else if burst == 0 {
                format!("{rate} {unit}/s (burst: 1 s)")
            } else {
                format!("{rate} {unit}/s (burst {burst})")
            }
        };
        format!(
            "{}, {}",
            part(self.msgs_per_sec.into(), self.burst_msgs.into(), "msgs"),
            part(self.bytes_per_sec, self.burst_bytes, "bytes")
        )
    }
}

/// A key's certificate binding as shown: "sha256 ab12…, name orders.client.nexus", or "none".
pub fn describe_binding(sha256: &[String], names: &[String]) -> String {
    if sha256.is_empty() && names.is_empty() {
        return "none".into();
    }
    sha256
        .iter()
        .map(|f| format!("sha256 {f}"))
        .chain(names.iter().map(|n| format!("name {n}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A key operation waiting for the operator's confirmation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PendingKeyAction {
    Create {
        name: String,
        publish: Vec<String>,
        subscribe: Vec<String>,
        admin: bool,
        expires_in_days: u32,
    },
    Rotate {
        id: String,
        name: String,
        overlap_seconds: u64,
    },
    Revoke {
        id: String,
        name: String,
    },
    /// Set the key's rate limits (all zero: clear them).
    SetLimits {
        id: String,
        name: String,
        limits: KeyLimitsForm,
    },
    /// Bind the key to client certificates (both lists empty: clear the binding).
    SetBinding {
        id: String,
        name: String,
        sha256: Vec<String>,
        names: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysPage {
    pub keys: Vec<KeyRow>,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub pending: Option<PendingKeyAction>,
}

// === message trace ===

/// One hop of a traced message, as a gateway recorded it (Admin API `GetTrace`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    pub message_id: String,
    /// Milliseconds since the first record shown (each gateway's own clock).
    pub offset_ms: f64,
    /// Wall-clock time of the record (UTC).
    pub at: String,
    pub region: String,
    pub gateway_id: String,
    pub event: String,
    pub reason: String,
    pub subject: String,
    pub peer: String,
    pub detail: String,
    /// The hop's own latency (link RTT, a request's round trip), microseconds; 0: none.
    pub latency_us: u64,
}

/// What the trace page shows: one message's timeline (`id`), or the recent traced messages
/// on a subject pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracePage {
    pub id: String,
    pub subject: String,
    pub rows: Vec<TraceRow>,
    /// Live gateways asked, and those that could not answer (`region/gateway: error`).
    pub gateways_asked: u32,
    pub unreachable: Vec<String>,
    /// The sampling rates the gateways reported.
    pub sample_rates: Vec<f64>,
    /// The time window searched (as typed), and what it meant (UTC), or why not.
    pub since: String,
    pub until: String,
    pub window: String,
    /// The topology the path is drawn on: every known region (health) and its gateways, and
    /// the federation links between regions (region, region, health).
    pub map: Vec<TraceMapRegion>,
    pub map_links: Vec<(String, String, Health)>,
}

/// A region of the trace page's map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceMapRegion {
    pub name: String,
    pub health: Health,
    pub gateways: Vec<String>,
}

// === session ===

/// A one-time message for the next page the operator sees (post/redirect/get).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Flash {
    Notice(String),
    Error(String),
    /// A key was created or rotated: the full secret, shown this once.
    KeySecret {
        id: String,
        name: String,
        secret: String,
    },
    /// A failed route form, with what was typed.
    RouteFormError {
        error: String,
        form: RouteForm,
    },
    /// The result of checking a draft schema, with the draft.
    SchemaCheck {
        subject: String,
        format: String,
        message: String,
        draft: String,
        outcome: Result<CheckOutcome, String>,
    },
}

/// Who is logged in, for the navigation bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub logged_in: bool,
    pub csrf: String,
    /// The control plane's Admin API does not check keys.
    pub open_control_plane: bool,
    pub key_id: Option<String>,
}

// === live tail and gateway warnings ===

/// One message of the live tail (`/live`), redacted by the control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailLine {
    pub message_id: String,
    pub subject: String,
    /// When the gateway received it (UTC, milliseconds).
    pub at: String,
    pub region: String,
    pub gateway_id: String,
    /// publish or request.
    pub kind: String,
    pub payload_bytes: u32,
    pub header_keys: Vec<String>,
    pub preview: String,
    pub preview_note: String,
}

/// The tail's counters over every gateway so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailCounters {
    pub gateways: u32,
    pub matched: u64,
    pub sent: u64,
    pub dropped_rate_limit: u64,
    pub dropped_slow_viewer: u64,
    /// `region/gateway: why` for gateways that could not be tapped.
    pub unreachable: Vec<String>,
}

/// What the tail's event stream (`/events/tail`) sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TailItem {
    Message(TailLine),
    Stats(TailCounters),
    /// The tail could not start or ended (the control plane's words).
    Error(String),
}

/// One WARN or ERROR event of a gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: String,
    pub at_us: i64,
    pub region: String,
    pub gateway_id: String,
    pub level: String,
    pub target: String,
    pub message: String,
    /// The other fields, `key=value` space-separated.
    pub fields: String,
}

/// The live page's first render: the gateways' recent warnings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LivePage {
    pub logs: Vec<LogLine>,
    pub error: Option<String>,
}
