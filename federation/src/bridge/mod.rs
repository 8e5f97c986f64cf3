//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, applies the subject's
//! route (policy and consistency mode, see [`crate::routes`]) to each local publish and to
//! requests no local responder could take, and hands messages from other regions to the
//! local router. It is the links' [`LinkHandler`] and the gateway's [`Remote`].
//!
//! - [`plan`]: which regions a message or request goes to.
//! - [`replication`]: `async` / `sync` routes through the durable spool (the shell around
//!   [`crate::replication`]).
//! - [`remote_requests`]: requests across regions.
//! - [`status`]: links, spools and `explain` for operators.
//!
//! Consistency modes: `local` never leaves the region; `best_effort` is queued on the link if
//! it is up and has room, else dropped and counted (and confirmed by the region, or counted
//! lost with its link); `async` / `sync` go through the spool.

mod plan;
mod remote_requests;
pub mod replication;
mod status;

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::future::BoxFuture;
use nexus_gateway::remote::{LinkStatus, PublishOutcome, Remote, SpoolStatus};
use nexus_gateway::router::{Delivery, ReplyResult, Router};
use nexus_proto::v1::{self, Forward, Header, InterestUpdate, link_frame::Kind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::interest::{LocalInterest, RemoteInterest, interest_key};
use crate::link::{Federation, LinkHandler, LinkInfo};
use crate::metrics::{FederationMetrics, Outcome};
use crate::replication::dedup::Seen;
use crate::routes::{Damping, Mode, RouteTable, Traffic};
use remote_requests::RemoteRequests;
use replication::Replication;
pub use replication::SpoolConfig;

pub struct RegionRouter {
    me: Weak<RegionRouter>,
    fed: Arc<Federation>,
    metrics: Arc<FederationMetrics>,
    router: Arc<Router>,
    local: Mutex<LocalInterest>,
    /// What other regions want; read on every publish without a lock, replaced whole on each
    /// interest update.
    remote: ArcSwap<RemoteInterest>,
    requests: RemoteRequests,
    /// The route table and the config version it was built from.
    routes: ArcSwap<(i64, Arc<RouteTable>)>,
    damping: Mutex<Damping>,
    replication: Arc<Replication>,
    /// The registered peers last handed to the links.
    peers_seen: Mutex<Vec<v1::FederationPeer>>,
}

fn now_ms() -> i64 {
    nexus_gateway::policy_now_ms()
}

impl RegionRouter {
    /// Connects `router` to `fed`: opens (or recovers) the spool, attaches federation's
    /// metrics to the gateway's, starts the links (this is their handler) and the spool pump.
    pub fn start(
        router: Arc<Router>,
        fed: Arc<Federation>,
        spool: SpoolConfig,
    ) -> Result<Arc<Self>, crate::replication::store::StoreError> {
        let metrics = fed.metrics().clone();
        let (replication, stored_interest) =
            Replication::open(&spool, &router.config().gateway_id, metrics.clone())?;
        let mut remote = RemoteInterest::default();
        for (region, patterns) in &stored_interest {
            let update = InterestUpdate {
                full: true,
                add: patterns.clone(),
                remove: Vec::new(),
            };
            remote.apply(region, &update);
        }
        router.metrics.attach(Box::new(metrics.clone()));
        let bridge = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            fed: fed.clone(),
            metrics,
            router: router.clone(),
            local: Mutex::new(LocalInterest::default()),
            remote: ArcSwap::from_pointee(remote),
            requests: RemoteRequests::default(),
            routes: ArcSwap::from_pointee((-1, Arc::new(RouteTable::new(&[])))),
            damping: Mutex::new(Damping::default()),
            replication: Arc::new(replication),
            peers_seen: Mutex::new(Vec::new()),
        });
        router.set_remote(bridge.clone());
        fed.start(bridge.clone());
        let b = bridge.clone();
        tokio::spawn(
            bridge
                .replication
                .clone()
                .pump(fed, move || b.follow_peers()),
        );
        Ok(bridge)
    }

    /// The route table, rebuilt when the control plane's config changes.
    fn route_table(&self) -> Arc<RouteTable> {
        let policy = self.router.policy();
        let cached = self.routes.load();
        if cached.0 == policy.version {
            return cached.1.clone();
        }
        let table = Arc::new(RouteTable::new(&policy.routes));
        self.routes.store(Arc::new((policy.version, table.clone())));
        table
    }

    /// Keeps links to the peers the control plane pushed with the config, when they change.
    fn follow_peers(&self) {
        let policy = self.router.policy();
        let mut seen = self.peers_seen.lock();
        if *seen == policy.peers {
            return;
        }
        *seen = policy.peers.clone();
        let peers: Vec<(String, std::net::SocketAddr)> = policy
            .peers
            .iter()
            .filter_map(|p| match p.addr.parse() {
                Ok(addr) => Some((p.region.clone(), addr)),
                Err(_) => {
                    tracing::warn!(region = %p.region, addr = %p.addr, "registered federation address is not HOST:PORT; ignoring it");
                    None
                }
            })
            .collect();
        self.fed.follow_registered(&peers);
    }

    fn on_interest(&self, region: &str, update: InterestUpdate) {
        let mut remote = RemoteInterest::clone(&self.remote.load());
        let rejected = remote.apply(region, &update);
        let patterns = remote.patterns(region);
        self.remote.store(Arc::new(remote));
        if !rejected.is_empty() {
            tracing::warn!(%region, ?rejected, "peer advertised invalid patterns");
        }
        // Remembered across restarts, so async routes keep spooling for a region that is
        // unreachable when this gateway starts.
        self.replication.store_interest(region.to_owned(), patterns);
    }

    async fn on_forward(&self, region: &str, forward: Forward) {
        self.metrics.outcome(Outcome::Received);
        let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
        if let Some(msg) = delivery(region, forward) {
            self.router.deliver_from_region(msg, plain, &groups).await;
        }
    }
}

impl LinkHandler for RegionRouter {
    fn up(&self, link: &LinkInfo) {
        // A new or returning peer: tell it everything we want, confirm again what we
        // recorded from it, and let the pump resend what it has not confirmed.
        let full = self.local.lock().full();
        self.fed.send_interest(&link.region, full);
        self.replication.link_up(&self.fed, link);
    }

    fn down(&self, link: &LinkInfo, reason: &str) {
        self.requests.link_down(link, reason);
        // The region's interest is kept: best-effort messages it would have received are
        // counted as dropped, spooled ones wait for it.
        self.replication.wake();
    }

    fn control(&self, link: &LinkInfo, frame: Kind) {
        match frame {
            Kind::Interest(update) => self.on_interest(&link.region, update),
            Kind::SpoolAck(ack) => self.replication.on_ack(&link.region, ack),
            Kind::SpoolNack(nack) => self.replication.on_nack(link, nack),
            _ => {}
        }
    }

    fn data<'a>(&'a self, link: &'a LinkInfo, frame: Kind) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match frame {
                Kind::Forward(forward) => self.on_forward(&link.region, forward).await,
                Kind::Spooled(spooled) => {
                    self.replication
                        .on_spooled(&self.fed, &self.router, link, spooled)
                        .await
                }
                Kind::Request(request) => {
                    // Served like a local request, with the budget the requester has left.
                    let (Some(me), region) = (self.me.upgrade(), link.region.clone()) else {
                        return;
                    };
                    tokio::spawn(async move {
                        let reply = remote_requests::serve(&me.router, request).await;
                        if me.fed.try_send_data(&region, Kind::Reply(reply)).is_none() {
                            tracing::warn!(%region, "could not send a reply back across the link");
                        }
                    });
                }
                Kind::Reply(reply) => self.requests.on_reply(&self.fed, &link.region, reply),
                _ => {}
            }
        })
    }
}

/// A forwarded message as the local router delivers it; `None` (logged) when its subject is
/// not valid.
fn delivery(region: &str, forward: Forward) -> Option<Delivery> {
    if nexus_proto::subject::validate_subject(&forward.subject).is_err() {
        tracing::warn!(%region, subject = %forward.subject, "dropping a message with an invalid subject from another region");
        return None;
    }
    Some(Delivery {
        subject: forward.subject.into(),
        reply_to: forward.reply_to.into(),
        headers: forward.headers,
        payload: forward.payload,
        id: forward.id,
    })
}

impl Remote for RegionRouter {
    fn request(
        &self,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<ReplyResult>> {
        let table = self.route_table();
        let (rule, _) = table.resolve(subject);
        let choice = self.choose(rule, Traffic::Request, false, subject);
        let region = choice.regions.into_iter().next()?;
        self.requests
            .send(&self.fed, region, subject, headers, payload, timeout)
    }

    fn prefers_remote_responders(&self, subject: &str) -> bool {
        let table = self.route_table();
        let (rule, _) = table.resolve(subject);
        let here = self.fed.region();
        match &rule.policy {
            crate::routes::Policy::Pinned(r) => r != here,
            // Weighted: this region takes its share only if it is listed.
            crate::routes::Policy::Weighted(w) => {
                let total: u64 = w.iter().map(|(_, w)| u64::from(*w)).sum();
                let mine: u64 = w
                    .iter()
                    .filter(|(r, _)| r == here)
                    .map(|(_, w)| u64::from(*w))
                    .sum();
                total > 0 && rand::random_range(0..total) >= mine
            }
            _ => false,
        }
    }

    fn interest_changed(&self, pattern: &str, queue: Option<&str>, present: bool) {
        let key = interest_key(pattern, queue);
        let delta = {
            let mut local = self.local.lock();
            if present {
                local.add(&key)
            } else {
                local.remove(&key)
            }
        };
        if let Some(delta) = delta {
            self.fed.broadcast_interest(&delta);
        }
    }

    fn publish(&self, msg: &Delivery, local_interest: bool) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let table = self.route_table();
        let (rule, _) = table.resolve(&msg.subject);
        if rule.mode == Mode::Local {
            return outcome;
        }
        // Idempotent publishing on durable routes: a message id seen before is answered with
        // the first attempt's outcome and delivered nowhere.
        let id = replication::message_id(msg);
        if rule.mode.spooled() {
            match self.replication.check_id(id) {
                (Seen::New, _) => {}
                (seen, receipt) => {
                    self.metrics.publish_duplicates.inc();
                    outcome.duplicate = true;
                    outcome.receipt = receipt.or_else(|| {
                        debug_assert_eq!(seen, Seen::Accepted);
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(Ok(()));
                        Some(rx)
                    });
                    return outcome;
                }
            }
        }
        let matches = self.remote.load().matches(&msg.subject);
        let targets = if matches.is_empty() {
            Vec::new()
        } else {
            self.targets(rule, &msg.subject, local_interest, &matches)
        };
        if targets.is_empty() {
            if rule.mode.spooled() {
                self.replication.accepted_without_spool(id);
            }
            return outcome;
        }
        let origin = self.fed.region();
        if rule.mode.spooled() {
            outcome.spooled = targets.iter().map(|t| t.region.clone()).collect();
            let needed = match rule.sync_quorum as usize {
                0 => targets.len(),
                q => q.min(targets.len()),
            };
            let sync = (rule.mode == Mode::Sync)
                .then(|| (needed, now_ms() + i64::from(rule.sync_timeout_ms)));
            let forwards = targets
                .iter()
                .map(|t| (t.region.clone(), t.forward(msg, origin)))
                .collect();
            outcome.receipt = Some(self.replication.publish(&rule.name, id, forwards, sync));
            return outcome;
        }
        for t in targets {
            if self.fed.try_forward(&t.region, t.forward(msg, origin)) {
                self.metrics.outcome(Outcome::Forwarded);
                outcome.forwarded.push(t.region);
            }
        }
        outcome
    }

    fn links(&self) -> Vec<LinkStatus> {
        self.link_statuses()
    }

    fn spools(&self) -> Vec<SpoolStatus> {
        self.spool_statuses()
    }

    fn explain(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        self.explanation(subject, local_interest)
    }
}
