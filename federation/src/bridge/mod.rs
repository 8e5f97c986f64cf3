//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, applies the subject's
//! route (policy and consistency mode, see [`crate::routes`]) to each local publish and to
//! requests no local responder could take, and hands messages from other regions to the
//! local router. It is the links' [`LinkHandler`](crate::link::LinkHandler) and the gateway's
//! [`Remote`](nexus_gateway::remote::Remote); it reaches the gateway only through
//! [`LocalGateway`].
//!
//! - [`inbound`]: what the links bring (the `LinkHandler` impl): forwards, spooled and
//!   relayed messages, interest, requests to serve, links up and down.
//! - [`outbound`]: what the gateway hands over (the `Remote` impl): publishes, requests,
//!   interest and key-activity changes, status.
//! - [`cluster`]: the region's other gateways: their interest, what this gateway advertises,
//!   who gets a message inside the region (one hop).
//! - [`plan`]: which regions a message or request goes to.
//! - [`replication`]: `async` / `sync` routes through the durable spool (the shell around
//!   [`crate::replication`]).
//! - [`remote_requests`]: requests across regions and to the region's other gateways.
//! - [`cluster_streams`]: streams whose two sides are on two gateways of the region.
//! - [`status`]: links, spools and `explain` for operators.
//!
//! Consistency modes: `local` never leaves the region; `best_effort` is queued on the link if
//! it is up and has room, else dropped and counted (and confirmed by the region, or counted
//! lost with its link); `async` / `sync` go through the spool.

mod cluster;
mod cluster_streams;
mod forwarded;
mod inbound;
mod outbound;
mod plan;
mod remote_requests;
pub mod replication;
mod status;
mod trace_hops;

use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use nexus_gateway::local_gateway::LocalGateway;
use nexus_proto::v1::{self, InterestUpdate};
use parking_lot::Mutex;

use crate::cluster::key_activity::{KeyActivity, ShareChange};
use crate::cluster::membership::Member;
use crate::interest::RemoteInterest;
use crate::link::{Federation, LinkInfo, LinkKind};
use crate::metrics::FederationMetrics;
use crate::routes::{Damping, RouteTable};
use cluster::Cluster;
use remote_requests::RemoteRequests;
use replication::Replication;
pub use replication::SpoolConfig;

pub struct RegionRouter {
    me: Weak<RegionRouter>,
    fed: Arc<Federation>,
    metrics: Arc<FederationMetrics>,
    gateway: Arc<dyn LocalGateway>,
    /// The other gateways of this region, and the interest this gateway advertises.
    cluster: Cluster,
    /// What other regions want; read on every publish without a lock, replaced whole on each
    /// interest update.
    remote: ArcSwap<RemoteInterest>,
    requests: RemoteRequests,
    /// Streams with a side on another gateway of the region.
    streams: Arc<cluster_streams::ClusterStreams>,
    /// The route table and the config version it was built from.
    routes: ArcSwap<(i64, Arc<RouteTable>)>,
    damping: Mutex<Damping>,
    replication: Arc<Replication>,
    /// The registered peers last handed to the links.
    peers_seen: Mutex<Vec<v1::FederationPeer>>,
    /// Which API keys have sessions here and on each cluster peer (the split of the keys'
    /// rate limits).
    keys: Mutex<KeyActivity>,
}

fn now_ms() -> i64 {
    nexus_gateway::policy_now_ms()
}

impl RegionRouter {
    /// Connects `router` to `fed`: opens (or recovers) the spool, attaches federation's
    /// metrics to the gateway's, starts the links (this is their handler) and the spool pump.
    pub fn start(
        gateway: Arc<dyn LocalGateway>,
        fed: Arc<Federation>,
        spool: SpoolConfig,
    ) -> Result<Arc<Self>, crate::replication::store::StoreError> {
        let metrics = fed.metrics().clone();
        let (replication, stored_interest) =
            Replication::open(&spool, &gateway.gateway_id(), metrics.clone())?;
        let mut remote = RemoteInterest::default();
        for (region, patterns) in &stored_interest {
            let update = InterestUpdate {
                full: true,
                add: patterns.clone(),
                remove: Vec::new(),
            };
            remote.apply(region, &update);
        }
        gateway.attach_metrics(Box::new(metrics.clone()));
        let bridge = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            fed: fed.clone(),
            metrics,
            gateway: gateway.clone(),
            cluster: Cluster::default(),
            keys: Mutex::new(KeyActivity::default()),
            remote: ArcSwap::from_pointee(remote),
            requests: RemoteRequests::default(),
            streams: cluster_streams::ClusterStreams::new(fed.clone(), gateway.clone()),
            routes: ArcSwap::from_pointee((-1, Arc::new(RouteTable::new(&[])))),
            damping: Mutex::new(Damping::default()),
            replication: Arc::new(replication),
            peers_seen: Mutex::new(Vec::new()),
        });
        gateway.set_remote(bridge.clone());
        fed.start(bridge.clone());
        // The peers to link to, and who may not have told its keys, follow the control
        // plane's pushes as they are installed (no polling).
        let mut pushes = gateway.watch_policy();
        let follower = Arc::downgrade(&bridge);
        tokio::spawn(async move {
            loop {
                match follower.upgrade() {
                    Some(b) => {
                        b.follow_peers();
                        b.count_unknown_key_peers();
                    }
                    None => return,
                }
                if pushes.changed().await.is_err() {
                    return;
                }
            }
        });
        let b = bridge.clone();
        tokio::spawn(
            bridge
                .replication
                .clone()
                .pump(fed, gateway.clone(), move || b.forget_absent_peers()),
        );
        Ok(bridge)
    }

    /// The route table, rebuilt when the control plane's config changes.
    fn route_table(&self) -> Arc<RouteTable> {
        let cached = self.routes.load();
        if cached.0 == self.gateway.policy_version() {
            return cached.1.clone();
        }
        let policy = self.gateway.policy();
        let table = Arc::new(RouteTable::new(&policy.routes));
        self.routes.store(Arc::new((policy.version, table.clone())));
        table
    }

    /// Cluster peers absent (link down) for the grace period stop counting for key shares
    /// and requests. While the control plane still lists them (they may be alive, only cut
    /// off) their interest is kept and their relays are held in this gateway's spool until
    /// they return; once it no longer lists them they are gone: their interest leaves the
    /// region's and what they were owed is given up (counted, and logged).
    fn forget_absent_peers(&self) {
        for gateway in self
            .cluster
            .past_grace(now_ms(), self.replication.relay_grace_ms())
        {
            let shares = self.keys.lock().peer_gone(&gateway);
            self.apply_key_shares(shares);
            self.requests.gateways.lock().forget(&gateway);
            if self.lists_peer(&gateway) {
                self.replication.peer_held(&self.fed, &gateway);
            } else {
                self.forget_peer(&gateway);
            }
        }
        for gateway in self.cluster.held() {
            if self.lists_peer(&gateway) {
                self.replication.reask(&self.fed, &gateway);
            } else {
                self.forget_peer(&gateway);
            }
        }
        for peer in self.fed.cluster_peers() {
            self.replication.reask(&self.fed, &peer.gateway_id);
        }
    }

    /// Whether the control plane still lists gateway `gateway` (its registration lives).
    /// Without a control plane (static `--cluster-peer` lists) nothing says a peer left for
    /// good, so every peer counts as listed.
    fn lists_peer(&self, gateway: &str) -> bool {
        let policy = self.gateway.policy();
        policy.peers.is_empty() || policy.peers.iter().any(|p| p.gateway_id == gateway)
    }

    /// Cluster peer `gateway` is gone for good: its interest leaves the region's, and relays
    /// no longer wait for it.
    fn forget_peer(&self, gateway: &str) {
        self.cluster.forget(gateway);
        let update = self.cluster.peer_gone(gateway);
        self.tell_regions(update);
        self.replication.peer_gone(&self.fed, gateway);
    }

    /// Keeps links to the peers the control plane pushed with the config, when they change.
    fn follow_peers(&self) {
        let policy = self.gateway.policy();
        let mut seen = self.peers_seen.lock();
        if *seen == policy.peers {
            return;
        }
        *seen = policy.peers.clone();
        let members = policy
            .peers
            .iter()
            .map(|p| Member {
                gateway_id: p.gateway_id.clone(),
                region: p.region.clone(),
                addr: p.addr.clone(),
            })
            .collect();
        drop(seen);
        self.fed.follow_membership(members);
    }

    /// The cluster peers a message on `subject` goes on to: plain subscribers (when `plain`),
    /// and each queue group (those in `groups`, or all) at the gateway the gateway balancer
    /// picks. Also returns the local groups a peer takes instead.
    fn peer_targets(
        &self,
        subject: &str,
        plain: bool,
        groups: Option<&[String]>,
    ) -> (Vec<cluster::PeerTarget>, Vec<String>) {
        let (targets, taken) = self.cluster.targets(
            subject,
            plain,
            groups,
            |group| self.gateway.local_queue_cost(subject, group),
            |gw| self.fed.rtt_to(gw),
            &mut rand::rng(),
        );
        if !taken.is_empty() {
            self.metrics
                .queue_messages_to_peers
                .inc_by(taken.len() as u64);
        }
        (targets, taken)
    }

    /// The spool queue that confirmations and resend requests on `link` are about.
    fn destination(&self, link: &LinkInfo) -> String {
        if link.region == self.fed.region() {
            replication::peer_key(&link.gateway_id)
        } else {
            link.region.clone()
        }
    }

    /// Divides each changed key's rate limits among the gateways of the region where it has
    /// sessions now.
    fn apply_key_shares(&self, shares: Vec<ShareChange>) {
        for (key, peers) in shares {
            self.gateway.set_key_peers_active(&key, peers);
        }
        self.count_unknown_key_peers();
    }

    /// The region's other gateways in the control plane's push that have not told their
    /// keys (not linked yet, or gone) count as having sessions of every key.
    fn count_unknown_key_peers(&self) {
        let policy = self.gateway.policy();
        let (region, me) = (self.fed.region(), self.fed.gateway_id());
        let listed: Vec<&str> = policy
            .peers
            .iter()
            .filter(|p| p.region == region && p.gateway_id != me)
            .map(|p| p.gateway_id.as_str())
            .collect();
        let unknown = self.keys.lock().unknown(&listed);
        self.gateway.set_key_unknown_peers(unknown);
    }

    /// Sends an interest change to other regions.
    fn tell_regions(&self, update: Option<InterestUpdate>) {
        if let Some(update) = update {
            self.fed.broadcast_interest(LinkKind::Federation, &update);
        }
    }
}
