//! Prometheus series of federation: links, best-effort accounting, the replication spool and
//! idempotent publishing, and spool replicas. Registered beside the mechanisms that move them and attached to the
//! gateway's `/metrics` ([`nexus_gateway::metrics::GatewayMetrics::attach`]), under the same
//! `nexus_` prefix.

use nexus_gateway::label_enum;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

label_enum! {
    /// What happened to a message at a federation link (all regions together).
    Outcome {
        Forwarded => "forwarded",
        Dropped => "dropped",
        Received => "received",
        Spooled => "spooled",
        Duplicate => "duplicate",
    }
}

label_enum! {
    /// Why a best-effort message for a region did not reach it.
    DropReason {
        /// No link to the region when it was published.
        LinkDown => "link_down",
        /// The link's queue was full (overload).
        QueueFull => "queue_full",
        /// Queued or in flight on a link that ended before the region confirmed it.
        LinkLost => "link_lost",
    }
}

label_enum! {
    /// Why spooled messages were deleted without delivery.
    SpoolLoss { Overflow => "overflow", Expired => "expired" }
}

label_enum! {
    /// How a link ended.
    DownReason {
        /// The peer went silent for the detection time.
        Silent => "silent",
        /// The peer or the network closed it.
        Closed => "closed",
        /// A newer link to the same region replaced it.
        Replaced => "replaced",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub region: String,
    pub reason: DropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownLabels {
    pub region: String,
    pub reason: DownReason,
}

/// Replication spool series are per (route, region): label values come from the control
/// plane's route names and region names, so they are strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoolLabels {
    pub route: String,
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoolLossLabels {
    pub region: String,
    pub reason: SpoolLoss,
}

#[derive(Debug, Default)]
pub struct FederationMetrics {
    pub messages: Family<OutcomeLabels, Counter>,
    pub links: Gauge,
    pub link_down: Family<DownLabels, Counter>,
    pub forwarded: Family<RegionLabels, Counter>,
    pub confirmed: Family<RegionLabels, Counter>,
    pub received: Family<RegionLabels, Counter>,
    pub unconfirmed: Family<RegionLabels, Gauge>,
    pub dropped: Family<DropLabels, Counter>,
    pub spool_depth: Family<SpoolLabels, Gauge>,
    pub replication_lag_ms: Family<SpoolLabels, Gauge>,
    pub spool_lost: Family<SpoolLossLabels, Counter>,
    pub spool_bytes: Gauge,
    pub replication_gaps: Family<RegionLabels, Counter>,
    pub publish_duplicates: Counter,
    pub dedup_evicted: Counter,
    pub dedup_ids: Gauge,
    /// Messages of other gateways' spools held here as their replica.
    pub replica_held: Gauge,
    /// Times this gateway started sending an unreachable gateway's spool as its replica.
    pub replica_takeovers: Counter,
    /// Publishes answered with a timeout because no replica confirmed them in time.
    pub replica_timeouts: Counter,
    /// Relays of spooled messages given up for a cluster peer: it left the control plane's
    /// list while they were owed, or this gateway's spool had no room to hold them.
    pub relays_abandoned: Counter,
    /// Relays written to this gateway's spool for a cluster peer cut off past the grace
    /// period (held relays), sent when it returns.
    pub relays_held: Counter,
    /// Held relays delivered here after newer messages of their stream (the stream's home in
    /// this region changed while they were held): late, out of order, not lost.
    pub held_relays_late: Counter,
    /// Requests that a local responder could have taken, sent to a cheaper gateway of the
    /// region by the gateway balancer (`cluster::balance`).
    pub requests_to_peers: Counter,
    /// Queue-group messages that a local member could have taken, given to a cheaper gateway
    /// of the region.
    pub queue_messages_to_peers: Counter,
    /// Copies for other gateways of the region that found their cluster link full, so the
    /// publisher waited for room (`backpressure` policy).
    pub cluster_forwards_waited: Counter,
    /// Data-stream bytes of links before (`raw`) and after (`wire`) batch compression.
    pub link_bytes: Family<LinkBytesLabels, Counter>,
    /// Compressed batches sent and received.
    pub link_compressed_batches: Family<LinkDirectionLabels, Counter>,
    /// Compressed payloads decoded for a peer that does not accept their codec.
    pub link_payloads_decoded: Family<LinkDirectionLabels, Counter>,
}

/// Labels of the link compression series: the link kind (`cluster`, `federation`), the
/// direction (`sent`, `received`) and, for bytes, `raw` or `wire`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LinkBytesLabels {
    pub link: &'static str,
    pub direction: &'static str,
    pub form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LinkDirectionLabels {
    pub link: &'static str,
    pub direction: &'static str,
}

impl FederationMetrics {
    /// The compression counters of one direction of a link of `kind`.
    pub fn link_counters(
        &self,
        kind: crate::cluster::membership::LinkKind,
        direction: &'static str,
    ) -> crate::link::compression::Counters {
        let link = match kind {
            crate::cluster::membership::LinkKind::Cluster => "cluster",
            crate::cluster::membership::LinkKind::Federation => "federation",
        };
        let bytes = |form| {
            self.link_bytes
                .get_or_create(&LinkBytesLabels {
                    link,
                    direction,
                    form,
                })
                .clone()
        };
        let labels = LinkDirectionLabels { link, direction };
        crate::link::compression::Counters {
            raw: bytes("raw"),
            wire: bytes("wire"),
            batches: self.link_compressed_batches.get_or_create(&labels).clone(),
            payloads_decoded: self.link_payloads_decoded.get_or_create(&labels).clone(),
        }
    }
}

impl FederationMetrics {
    pub fn outcome(&self, outcome: Outcome) {
        self.messages
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A best-effort message for `region` did not reach it.
    pub fn dropped(&self, region: &str, reason: DropReason, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                region: region.to_owned(),
                reason,
            })
            .inc_by(n);
        self.messages
            .get_or_create(&OutcomeLabels {
                outcome: Outcome::Dropped,
            })
            .inc_by(n);
    }
}

fn put(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

impl Collector for FederationMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        put(
            &mut e,
            "federation_messages",
            "Messages at federation links: forwarded to, dropped for (including those no reachable region could take), received from other regions, spooled for them (async/sync), or duplicates discarded on arrival",
            &self.messages,
        )?;
        put(
            &mut e,
            "federation_links",
            "Federation links to other regions that are up",
            &self.links,
        )?;
        put(
            &mut e,
            "federation_link_down",
            "Federation links that ended, by region and how (silent: the peer stopped answering for the detection time)",
            &self.link_down,
        )?;
        put(
            &mut e,
            "federation_forwarded",
            "Best-effort messages queued on a region's link",
            &self.forwarded,
        )?;
        put(
            &mut e,
            "federation_confirmed",
            "Best-effort messages the region confirmed it received",
            &self.confirmed,
        )?;
        put(
            &mut e,
            "federation_received",
            "Messages received from a region (best-effort forwards, and spooled messages delivered in order)",
            &self.received,
        )?;
        put(
            &mut e,
            "federation_unconfirmed",
            "Best-effort messages queued or in flight on the region's current link, not yet confirmed",
            &self.unconfirmed,
        )?;
        put(
            &mut e,
            "federation_dropped",
            "Best-effort messages for a region that did not reach it, by reason (link_down, queue_full, link_lost); copies for a gateway of this region are counted under this region",
            &self.dropped,
        )?;
        put(
            &mut e,
            "spool_depth",
            "Messages of async/sync routes spooled for a region and not yet confirmed by it",
            &self.spool_depth,
        )?;
        put(
            &mut e,
            "replication_lag_ms",
            "Age in milliseconds of the oldest spooled message a region has not confirmed",
            &self.replication_lag_ms,
        )?;
        put(
            &mut e,
            "spool_lost",
            "Spooled messages deleted without delivery, by reason (overflow, expired)",
            &self.spool_lost,
        )?;
        put(
            &mut e,
            "spool_bytes",
            "Bytes held in the replication spool",
            &self.spool_bytes,
        )?;
        put(
            &mut e,
            "replication_gaps",
            "Spooled messages from a region refused because one before them was missing (each answered with a request to resend)",
            &self.replication_gaps,
        )?;
        put(
            &mut e,
            "publish_duplicates",
            "Publishes on async/sync routes whose message id was accepted before (a retry): answered, not delivered again",
            &self.publish_duplicates,
        )?;
        put(
            &mut e,
            "publish_dedup_evicted",
            "Message ids that left the deduplication window early because it reached its size limit",
            &self.dedup_evicted,
        )?;
        put(
            &mut e,
            "publish_dedup_ids",
            "Message ids in the deduplication window",
            &self.dedup_ids,
        )?;
        put(
            &mut e,
            "spool_replica_held",
            "Messages of other gateways' spools held here as their replica (--spool-replicas 2)",
            &self.replica_held,
        )?;
        put(
            &mut e,
            "spool_replica_takeovers",
            "Times this gateway started sending an unreachable gateway's spool as its replica",
            &self.replica_takeovers,
        )?;
        put(
            &mut e,
            "spool_replica_timeouts",
            "Publishes answered with a timeout because no other gateway of the region confirmed holding them in time",
            &self.replica_timeouts,
        )?;
        put(
            &mut e,
            "cluster_relays_abandoned",
            "Spooled messages owed to a cluster peer and given up: it left the control plane's list while they were owed, or the spool had no room to hold them for it. Its subscribers may have missed them",
            &self.relays_abandoned,
        )?;
        put(
            &mut e,
            "cluster_relays_held",
            "Spooled messages from another region written to this gateway's spool for a cluster peer cut off past the grace period, to be sent when it returns",
            &self.relays_held,
        )?;
        put(
            &mut e,
            "cluster_held_relays_late",
            "Held relays delivered here after newer messages of their stream had arrived by another path (the stream's home in this region changed while they were held): delivered late and out of order rather than lost",
            &self.held_relays_late,
        )?;
        put(
            &mut e,
            "cluster_requests_to_peers",
            "Requests a local responder could have taken that the gateway balancer sent to a cheaper gateway of the region (its replies through the hop were faster, or local responders were busy)",
            &self.requests_to_peers,
        )?;
        put(
            &mut e,
            "cluster_queue_messages_to_peers",
            "Queue-group messages a local member could have taken that went to a gateway of the region with members, because the local members were queued up",
            &self.queue_messages_to_peers,
        )?;
        put(
            &mut e,
            "cluster_forwards_waited",
            "Copies of messages published here for other gateways of the region that found the cluster link's queue full, so the publisher waited for room (slow-consumer policy backpressure; those still without room after max_wait_ms are in nexus_federation_dropped_total{reason=\"queue_full\"})",
            &self.cluster_forwards_waited,
        )?;
        put(
            &mut e,
            "link_bytes",
            "Bytes of link data streams as frames (form=raw) and as sent after batch compression (form=wire), by link kind and direction",
            &self.link_bytes,
        )?;
        put(
            &mut e,
            "link_compressed_batches",
            "Compressed batches of frames sent and received on link data streams",
            &self.link_compressed_batches,
        )?;
        put(
            &mut e,
            "link_payloads_decoded",
            "Compressed payloads decoded before sending them to a peer gateway that does not accept their codec",
            &self.link_payloads_decoded,
        )?;
        Ok(())
    }
}
