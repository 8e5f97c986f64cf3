//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, applies the subject's
//! route (policy and consistency mode, see [`crate::routes`]) to each local publish and to
//! requests no local responder could take, and hands messages from other regions to the
//! local router.
//!
//! Consistency modes:
//! - `local`: never forwarded;
//! - `best_effort`: queued on the link if it is up and has room, else dropped and counted;
//! - `async` / `sync`: written to the durable [`crate::spool`] (one group-committed redb
//!   transaction per batch, on a dedicated thread), sent in order by the spool pump, deleted
//!   when the region confirms; receivers drop what they already recorded. `async` publishers
//!   are acknowledged after the spool write, `sync` ones after a quorum of regions confirmed,
//!   or get a timeout error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use nexus_gateway::metrics::{
    FederationOutcome, GatewayMetrics, SpoolLabels, SpoolLoss, SpoolLossLabels,
};
use nexus_gateway::remote::{LinkStatus, PublishReceipt, Remote, SpoolStatus};
use nexus_gateway::router::{Delivery, ReplyResult, Router, Waiter, error};
use nexus_proto::v1::{
    self, ErrorCode, Forward, Header, RemoteReply, RemoteRequest, SpoolAck, Spooled,
    link_frame::Kind,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::interest::{Interested, LocalInterest, RemoteInterest, interest_key};
use crate::link::{Federation, LinkEvent};
use crate::routes::{Candidate, Choice, Damping, Mode, RouteTable, Rule, Traffic, choose};
use crate::spool::quorum::Quorum;
use crate::spool::store::{Op, SpoolStore};
use crate::spool::{Limits, Spool};

/// Spooled messages sent per region per pump pass, so one region cannot starve the others.
const PUMP_BATCH: usize = 512;
/// How often the pump expires old messages, fails late sync publishes and updates gauges.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// Counters of cross-region traffic, per linked region.
#[derive(Default, Debug)]
pub struct LinkCounters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub received: AtomicU64,
}

/// Where the spool lives and how big it may grow.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub path: std::path::PathBuf,
    pub limits: Limits,
}

/// A latency estimate of what a region's responders take, learnt from replies.
#[derive(Debug, Default, Clone, Copy)]
struct RegionCost {
    /// Peak-EWMA of service time (reply latency minus link RTT), in microseconds.
    service_us: f64,
    in_flight: u32,
}

impl RegionCost {
    fn observe(&mut self, service_us: f64) {
        // Peak-sensitive: a slower sample takes over at once, faster ones decay in.
        if service_us > self.service_us {
            self.service_us = service_us;
        } else {
            self.service_us += (service_us - self.service_us) * 0.2;
        }
    }
}

type WriteDone = Box<dyn FnOnce(Result<(), String>) + Send>;

struct WriteBatch {
    ops: Vec<Op>,
    done: Option<WriteDone>,
}

type SyncReply = oneshot::Sender<Result<(), v1::Error>>;

/// A request sent to another region: (region, when it was sent, where the answer goes).
type OutstandingRequest = (String, Instant, oneshot::Sender<ReplyResult>);

struct SpoolState {
    spool: Mutex<Spool>,
    writer: mpsc::UnboundedSender<WriteBatch>,
    quorum: Mutex<Quorum<SyncReply>>,
    /// Receiver side: highest `seq` delivered from each origin, and the highest one on disk.
    received: Mutex<HashMap<String, (u64, u64)>>,
    wake: Notify,
}

pub struct RegionRouter {
    fed: Arc<Federation>,
    metrics: Arc<GatewayMetrics>,
    router: Arc<Router>,
    local: Mutex<LocalInterest>,
    /// What other regions want; read on every publish without a lock, replaced whole by
    /// the event task (the only writer) on each interest update.
    remote: ArcSwap<RemoteInterest>,
    /// Requests sent to other regions, by id: (region, when, where the answer goes).
    requests: Mutex<HashMap<u64, OutstandingRequest>>,
    next_request: AtomicU64,
    counters: Mutex<HashMap<String, Arc<LinkCounters>>>,
    costs: Mutex<HashMap<String, RegionCost>>,
    /// The route table and the config version it was built from.
    routes: ArcSwap<(i64, Arc<RouteTable>)>,
    damping: Mutex<Damping>,
    spool: Arc<SpoolState>,
    /// The registered peers last handed to the links.
    peers_seen: Mutex<Vec<v1::FederationPeer>>,
}

fn now_ms() -> i64 {
    nexus_gateway::policy_now_ms()
}

impl RegionRouter {
    /// Connects `router` to `fed`: opens (or recovers) the spool, then starts handling link
    /// events from `events` and pumping the spool.
    pub fn start(
        router: Arc<Router>,
        fed: Arc<Federation>,
        mut events: mpsc::Receiver<LinkEvent>,
        spool_cfg: SpoolConfig,
    ) -> Result<Arc<Self>, crate::spool::store::StoreError> {
        let store = SpoolStore::open(&spool_cfg.path)?;
        let loaded = store.load()?;
        let mut spool = Spool::new(spool_cfg.limits.clone());
        let mut recovered = 0usize;
        for (region, (acked, entries)) in loaded.queues {
            recovered += entries.len();
            spool.restore(&region, acked, entries);
        }
        let mut remote = RemoteInterest::default();
        for (region, patterns) in &loaded.interest {
            let update = v1::InterestUpdate {
                full: true,
                add: patterns.clone(),
                remove: Vec::new(),
            };
            remote.apply(region, &update);
        }
        if recovered > 0 {
            tracing::info!(
                recovered,
                path = %spool_cfg.path.display(),
                "replication spool recovered unconfirmed messages"
            );
        }
        let writer = start_writer(store);
        let bridge = Arc::new(Self {
            fed,
            metrics: router.metrics.clone(),
            router: router.clone(),
            local: Mutex::new(LocalInterest::default()),
            remote: ArcSwap::from_pointee(remote),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            counters: Mutex::new(HashMap::new()),
            costs: Mutex::new(HashMap::new()),
            routes: ArcSwap::from_pointee((-1, Arc::new(RouteTable::new(&[])))),
            damping: Mutex::new(Damping::default()),
            peers_seen: Mutex::new(Vec::new()),
            spool: Arc::new(SpoolState {
                spool: Mutex::new(spool),
                writer,
                quorum: Mutex::new(Quorum::default()),
                received: Mutex::new(
                    loaded
                        .received
                        .into_iter()
                        .map(|(k, v)| (k, (v, v)))
                        .collect(),
                ),
                wake: Notify::new(),
            }),
        });
        router.set_remote(bridge.clone());
        let b = bridge.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                b.on_event(event).await;
            }
        });
        let b = bridge.clone();
        tokio::spawn(async move { b.pump().await });
        Ok(bridge)
    }

    fn counters(&self, region: &str) -> Arc<LinkCounters> {
        let mut c = self.counters.lock();
        match c.get(region) {
            Some(x) => x.clone(),
            None => c.entry(region.to_owned()).or_default().clone(),
        }
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

    async fn on_event(self: &Arc<Self>, event: LinkEvent) {
        match event {
            LinkEvent::Up { region, .. } => {
                self.metrics
                    .federation_links
                    .set(self.fed.connected_regions().len() as i64);
                // A new or returning peer: tell it everything we want, re-confirm what we
                // recorded from it, and resend what it has not confirmed.
                let full = self.local.lock().full();
                self.fed.send_interest(&region, full);
                let committed = self
                    .spool
                    .received
                    .lock()
                    .get(&region)
                    .map_or(0, |(_, c)| *c);
                if committed > 0 {
                    self.fed
                        .try_send_control(&region, Kind::SpoolAck(SpoolAck { up_to: committed }));
                }
                self.spool.spool.lock().link_reset(&region);
                self.spool.wake.notify_one();
            }
            LinkEvent::Interest { region, update } => {
                let mut remote = RemoteInterest::clone(&self.remote.load());
                let rejected = remote.apply(&region, &update);
                let patterns = remote.patterns(&region);
                self.remote.store(Arc::new(remote));
                if !rejected.is_empty() {
                    tracing::warn!(%region, ?rejected, "peer advertised invalid patterns");
                }
                // Remembered across restarts, so async routes keep spooling for a region
                // that is unreachable when this gateway starts.
                let _ = self.spool.writer.send(WriteBatch {
                    ops: vec![Op::Interest { region, patterns }],
                    done: None,
                });
            }
            LinkEvent::Forward { region, forward } => {
                self.counters(&region)
                    .received
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Received);
                let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
                if let Some(msg) = delivery(&region, forward) {
                    self.router.deliver_from_region(msg, plain, &groups).await;
                }
            }
            LinkEvent::Spooled { region, spooled } => self.on_spooled(region, spooled).await,
            LinkEvent::SpoolAck { region, up_to } => self.on_spool_ack(&region, up_to),
            LinkEvent::Request { region, request } => {
                // Served like a local request, with the budget the requester has left.
                let bridge = self.clone();
                tokio::spawn(async move {
                    let reply = bridge.serve_remote(request).await;
                    if !bridge.fed.try_send_data(&region, Kind::Reply(reply)) {
                        tracing::warn!(%region, "could not send a reply back across the link");
                    }
                });
            }
            LinkEvent::Reply { region, reply } => {
                if let Some((_, sent, tx)) = self.requests.lock().remove(&reply.id) {
                    let rtt = self.fed.rtt(&region).unwrap_or_default();
                    let service = sent.elapsed().saturating_sub(rtt);
                    let mut costs = self.costs.lock();
                    let c = costs.entry(region).or_default();
                    c.in_flight = c.in_flight.saturating_sub(1);
                    if reply.error.is_none() {
                        c.observe(service.as_secs_f64() * 1e6);
                    }
                    drop(costs);
                    let result = match reply.error {
                        Some(e) => Err(e),
                        None => Ok((reply.headers, reply.payload)),
                    };
                    let _ = tx.send(result);
                }
            }
            LinkEvent::Down { region, reason } => {
                // Requests in flight on this link will get no answer: fail them now.
                let failed: Vec<oneshot::Sender<ReplyResult>> = {
                    let mut requests = self.requests.lock();
                    let ids: Vec<u64> = requests
                        .iter()
                        .filter(|(_, (r, _, _))| *r == region)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.into_iter()
                        .filter_map(|id| requests.remove(&id).map(|(_, _, tx)| tx))
                        .collect()
                };
                if let Some(c) = self.costs.lock().get_mut(&region) {
                    c.in_flight = 0;
                }
                for tx in failed {
                    let _ = tx.send(Err(error(
                        ErrorCode::ServiceError,
                        format!("the link to region {region} went down before the reply"),
                        0,
                    )));
                }
                tracing::warn!(%region, %reason, "federation link down");
                self.metrics
                    .federation_links
                    .set(self.fed.connected_regions().len() as i64);
                // The region's interest is kept: best-effort messages it would have
                // received are counted as dropped, spooled ones wait for it.
            }
        }
    }

    /// Receiver side of the spool: deliver what is new from `origin`, record it durably,
    /// then confirm it.
    async fn on_spooled(self: &Arc<Self>, origin: String, spooled: Spooled) {
        let seq = spooled.seq;
        tracing::debug!(%origin, seq, "spooled message arrived");
        let (delivered_up_to, committed) = self
            .spool
            .received
            .lock()
            .get(&origin)
            .copied()
            .unwrap_or((0, 0));
        if seq <= delivered_up_to {
            self.metrics.federation(FederationOutcome::Duplicate);
            if committed > 0 {
                self.fed
                    .try_send_control(&origin, Kind::SpoolAck(SpoolAck { up_to: committed }));
            }
            return;
        }
        self.counters(&origin)
            .received
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.federation(FederationOutcome::Received);
        if let Some(forward) = spooled.forward {
            let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
            if let Some(msg) = delivery(&origin, forward) {
                self.router.deliver_from_region(msg, plain, &groups).await;
            }
        }
        self.spool
            .received
            .lock()
            .entry(origin.clone())
            .or_default()
            .0 = seq;
        let bridge = self.clone();
        let _ = self.spool.writer.send(WriteBatch {
            ops: vec![Op::Received {
                origin: origin.clone(),
                seq,
            }],
            done: Some(Box::new(move |result| {
                if let Err(e) = result {
                    tracing::error!(%origin, error = %e, "cannot record received spooled messages");
                    return;
                }
                let newest = {
                    let mut received = bridge.spool.received.lock();
                    let r = received.entry(origin.clone()).or_default();
                    r.1 = r.1.max(seq);
                    r.0 == seq
                };
                // One confirmation per write batch: only for the newest message.
                if newest {
                    bridge
                        .fed
                        .try_send_control(&origin, Kind::SpoolAck(SpoolAck { up_to: seq }));
                }
            })),
        });
    }

    fn on_spool_ack(&self, region: &str, up_to: u64) {
        tracing::debug!(%region, up_to, "spool ack");
        let freed = self.spool.spool.lock().ack(region, up_to);
        if freed > 0 {
            let _ = self.spool.writer.send(WriteBatch {
                ops: vec![Op::Ack {
                    region: region.to_owned(),
                    up_to,
                }],
                done: None,
            });
        }
        for done in self.spool.quorum.lock().ack(region, up_to) {
            let _ = done.reply.send(Ok(()));
        }
    }

    /// Sends committed spooled messages over links that are up, and does the periodic
    /// chores: age expiry, late sync publishes, gauges.
    async fn pump(self: Arc<Self>) {
        let mut last_chores = Instant::now();
        loop {
            let mut blocked = false;
            let regions = self.spool.spool.lock().regions();
            for region in regions {
                if self.fed.rtt(&region).is_none() {
                    continue;
                }
                loop {
                    let batch = self.spool.spool.lock().next_to_send(&region, PUMP_BATCH);
                    if batch.is_empty() {
                        break;
                    }
                    let mut stopped_at = None;
                    for e in &batch {
                        if !self
                            .fed
                            .try_send_data(&region, Kind::Spooled(Spooled::clone(e)))
                        {
                            stopped_at = Some(e.seq);
                            break;
                        }
                    }
                    if let Some(seq) = stopped_at {
                        // The link's queue is full (or it just went down): resume there.
                        self.spool.spool.lock().unsend(&region, seq);
                        blocked = true;
                        break;
                    }
                    if batch.len() < PUMP_BATCH {
                        break;
                    }
                }
            }
            if last_chores.elapsed() >= HOUSEKEEPING {
                last_chores = Instant::now();
                self.chores();
            }
            let busy = blocked || !self.spool.quorum.lock().is_empty();
            let wait = if busy {
                Duration::from_millis(5)
            } else {
                HOUSEKEEPING
            };
            let _ = tokio::time::timeout(wait, self.spool.wake.notified()).await;
        }
    }

    fn chores(&self) {
        let now = now_ms();
        self.follow_peers();
        let expired = self.spool.spool.lock().expire(now);
        for r in expired {
            tracing::warn!(region = %r.region, count = r.seqs.len(), "spooled messages expired unsent");
            self.metrics
                .spool_lost
                .get_or_create(&SpoolLossLabels {
                    region: r.region.clone(),
                    reason: SpoolLoss::Expired,
                })
                .inc_by(r.seqs.len() as u64);
            let _ = self.spool.writer.send(WriteBatch {
                ops: vec![Op::Delete {
                    region: r.region,
                    seqs: r.seqs,
                }],
                done: None,
            });
        }
        for late in self.spool.quorum.lock().expire(now) {
            let _ = late.reply.send(Err(error(
                ErrorCode::Timeout,
                format!(
                    "sync replication timed out: {} of {} required regions confirmed ({}); still waiting for {}. The message stays spooled and may still be delivered",
                    late.confirmed.len(),
                    late.needed,
                    if late.confirmed.is_empty() { "none".to_owned() } else { late.confirmed.join(", ") },
                    late.pending.join(", ")
                ),
                0,
            )));
        }
        let spool = self.spool.spool.lock();
        self.metrics.spool_bytes.set(spool.bytes() as i64);
        let depths = spool.depths();
        drop(spool);
        self.metrics.spool_depth.clear();
        self.metrics.replication_lag_ms.clear();
        for d in depths {
            let labels = SpoolLabels {
                route: d.route,
                region: d.region,
            };
            self.metrics
                .spool_depth
                .get_or_create(&labels)
                .set(d.depth as i64);
            if let Some(oldest) = d.oldest_ms {
                self.metrics
                    .replication_lag_ms
                    .get_or_create(&labels)
                    .set((now - oldest).max(0));
            }
        }
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

    async fn serve_remote(&self, request: RemoteRequest) -> RemoteReply {
        let deadline = Duration::from_millis(u64::from(request.deadline_ms.max(1)));
        let (tx, rx) = oneshot::channel();
        let id = Bytes::copy_from_slice(&rand::random::<[u8; 16]>());
        let routed = self
            .router
            .request_from_region(
                Waiter::Unary(tx),
                &request.subject,
                request.headers,
                request.payload,
                id,
                deadline,
            )
            .await;
        let result = match routed {
            Err((_, e)) => Err(error(ErrorCode::NoResponders, e.to_string(), 0)),
            Ok(_) => match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(error(ErrorCode::ServiceError, "request was dropped", 0)),
                Err(_) => Err(error(ErrorCode::Timeout, "request timed out", 0)),
            },
        };
        match result {
            Ok((headers, payload)) => RemoteReply {
                id: request.id,
                headers,
                payload,
                error: None,
            },
            Err(e) => RemoteReply {
                id: request.id,
                headers: Vec::new(),
                payload: Bytes::new(),
                error: Some(e),
            },
        }
    }

    /// Every region this gateway knows of, as a candidate for `subject`.
    fn candidates(&self, subject: &str, spooled: bool) -> Vec<Candidate> {
        let interested = self.remote.load().regions_for(subject);
        self.candidates_among(&interested, spooled)
    }

    /// Every region this gateway knows of, `interested` ones marked, with link state and cost.
    fn candidates_among(&self, interested: &[String], spooled: bool) -> Vec<Candidate> {
        let mut regions: Vec<String> = self.fed.connected_regions();
        for r in interested {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
        regions.sort();
        let costs = self.costs.lock();
        regions
            .into_iter()
            .map(|region| {
                let rtt = self.fed.rtt(&region);
                let cost = costs.get(&region).copied().unwrap_or_default();
                Candidate {
                    interest: interested.contains(&region),
                    // Spooled modes queue for a region whose link is down.
                    up: spooled || rtt.is_some(),
                    cost_us: rtt.map(|rtt| {
                        (rtt.as_secs_f64() * 1e6 + cost.service_us) * f64::from(cost.in_flight + 1)
                    }),
                    region,
                }
            })
            .collect()
    }

    fn choose(&self, rule: &Rule, traffic: Traffic, local: bool, subject: &str) -> Choice {
        // Publishes of spooled routes wait for a region whose link is down; best-effort
        // broadcasts count it as a drop. Everything else picks among links that are up.
        let assume_up = traffic == Traffic::Publish
            && (rule.mode.spooled() || rule.policy == crate::routes::Policy::Broadcast);
        let candidates = self.candidates(subject, assume_up);
        choose(
            rule,
            traffic,
            local,
            &candidates,
            &mut self.damping.lock(),
            &mut rand::rng(),
        )
    }

    /// Which regions get a copy of a message on `subject`, and for whom there: the route's
    /// policy picks the regions whose plain subscribers get it; each queue group with no
    /// local members goes to the one region the policy picks among those that have it
    /// (local members always win, so a queue group never gets a message twice).
    fn targets(
        &self,
        rule: &Rule,
        subject: &str,
        local_interest: bool,
        matches: &[Interested],
    ) -> Vec<Target> {
        let assume_up = rule.mode.spooled() || rule.policy == crate::routes::Policy::Broadcast;
        let mut plain: Vec<String> = matches
            .iter()
            .filter(|m| m.queue.is_none())
            .map(|m| m.region.clone())
            .collect();
        plain.dedup();
        let mut targets: Vec<Target> = Vec::new();
        if !plain.is_empty() {
            let candidates = self.candidates_among(&plain, assume_up);
            let choice = choose(
                rule,
                Traffic::Publish,
                local_interest,
                &candidates,
                &mut self.damping.lock(),
                &mut rand::rng(),
            );
            if choice.regions.is_empty() && !choice.local {
                // Wanted elsewhere, but no region the policy allows is reachable.
                self.metrics.federation(FederationOutcome::Dropped);
            }
            targets.extend(choice.regions.into_iter().map(|region| Target {
                region,
                plain: true,
                queue_groups: Vec::new(),
            }));
        }
        let mut groups: Vec<&str> = matches.iter().filter_map(|m| m.queue.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        if groups.is_empty() {
            return targets;
        }
        let local_groups = self.router.local_queue_groups(subject);
        for group in groups {
            if local_groups.iter().any(|g| g == group) {
                continue;
            }
            let having: Vec<String> = matches
                .iter()
                .filter(|m| m.queue.as_deref() == Some(group))
                .map(|m| m.region.clone())
                .collect();
            let candidates = self.candidates_among(&having, rule.mode.spooled());
            // One region takes the group's message, as with a request.
            let choice = choose(
                rule,
                Traffic::Request,
                false,
                &candidates,
                &mut self.damping.lock(),
                &mut rand::rng(),
            );
            let Some(region) = choice.regions.into_iter().next() else {
                self.metrics.federation(FederationOutcome::Dropped);
                continue;
            };
            match targets.iter_mut().find(|t| t.region == region) {
                Some(t) => t.queue_groups.push(group.to_owned()),
                None => targets.push(Target {
                    region,
                    plain: false,
                    queue_groups: vec![group.to_owned()],
                }),
            }
        }
        targets
    }

    /// Writes `msg` to the spool for `regions`; the receipt resolves per the mode.
    fn spool_publish(&self, rule: &Rule, targets: Vec<Target>, msg: &Delivery) -> PublishReceipt {
        let (tx, rx) = oneshot::channel();
        let now = now_ms();
        let mut ops = Vec::with_capacity(targets.len());
        let mut seqs: Vec<(String, u64)> = Vec::with_capacity(targets.len());
        {
            let mut spool = self.spool.spool.lock();
            for target in &targets {
                let region = &target.region;
                match spool.append(
                    region,
                    &rule.name,
                    target.forward(msg, self.fed.region()),
                    now,
                ) {
                    Ok((spooled, removed)) => {
                        if let Some(r) = removed {
                            self.metrics
                                .spool_lost
                                .get_or_create(&SpoolLossLabels {
                                    region: r.region.clone(),
                                    reason: SpoolLoss::Overflow,
                                })
                                .inc_by(r.seqs.len() as u64);
                            ops.push(Op::Delete {
                                region: r.region,
                                seqs: r.seqs,
                            });
                        }
                        seqs.push((region.clone(), spooled.seq));
                        ops.push(Op::Append {
                            region: region.clone(),
                            spooled,
                        });
                    }
                    Err(full) => {
                        for (r, seq) in &seqs {
                            spool.forget(r, &[*seq]);
                        }
                        let _ = tx.send(Err(error(ErrorCode::Limit, full.to_string(), 0)));
                        return rx;
                    }
                }
            }
            for _ in &targets {
                self.metrics.federation(FederationOutcome::Spooled);
            }
            // Sent under the spool lock, so the writer sees each region's messages in
            // `seq` order and commits them in that order.
            let needed = match rule.sync_quorum as usize {
                0 => targets.len(),
                q => q.min(targets.len()),
            };
            let sync =
                (rule.mode == Mode::Sync).then(|| (needed, now + i64::from(rule.sync_timeout_ms)));
            let state = self.spool.clone();
            let seqs_done = seqs.clone();
            let _ = self.spool.writer.send(WriteBatch {
                ops,
                done: Some(Box::new(move |result| {
                    after_spool_write(&state, result, seqs_done, sync, tx)
                })),
            });
        }
        rx
    }
}

/// What runs after a spool write: acknowledge the publisher (async) or start waiting for its
/// quorum (sync), then mark the messages committed so the pump may send them.
fn after_spool_write(
    state: &SpoolState,
    result: Result<(), String>,
    seqs: Vec<(String, u64)>,
    sync: Option<(usize, i64)>,
    tx: SyncReply,
) {
    match result {
        Err(e) => {
            let mut spool = state.spool.lock();
            for (r, seq) in &seqs {
                spool.forget(r, &[*seq]);
            }
            let _ = tx.send(Err(error(
                ErrorCode::Unavailable,
                format!("could not write the message to the replication spool: {e}"),
                0,
            )));
        }
        Ok(()) => {
            // The quorum waiter exists before the pump can send, so no confirmation is
            // missed.
            match sync {
                Some((needed, deadline)) => {
                    state.quorum.lock().add(seqs.clone(), needed, deadline, tx)
                }
                None => {
                    let _ = tx.send(Ok(()));
                }
            }
            let mut spool = state.spool.lock();
            for (r, seq) in &seqs {
                spool.committed(r, *seq);
            }
            drop(spool);
            state.wake.notify_one();
        }
    }
}

/// The spool writer: a dedicated thread applying batches of operations, each group of
/// batches that arrived together in one durable transaction (group commit), then running
/// their completions in order.
fn start_writer(store: SpoolStore) -> mpsc::UnboundedSender<WriteBatch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<WriteBatch>();
    std::thread::Builder::new()
        .name("nexus-spool-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batches = vec![first];
                while batches.len() < 4096 {
                    match rx.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(_) => break,
                    }
                }
                let ops: Vec<Op> = batches.iter_mut().flat_map(|b| b.ops.drain(..)).collect();
                let result = store.apply(&ops).map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "replication spool write failed");
                }
                for b in batches {
                    if let Some(done) = b.done {
                        done(result.clone());
                    }
                }
            }
        })
        .expect("spawn the spool writer thread");
    tx
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

/// One region a message goes to, and whom it is for there.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    region: String,
    /// Its plain subscriptions.
    plain: bool,
    /// Its queue groups the message was assigned to.
    queue_groups: Vec<String>,
}

impl Target {
    fn forward(&self, msg: &Delivery, origin: &str) -> Forward {
        Forward {
            subject: msg.subject.to_string(),
            reply_to: String::new(),
            headers: msg.headers.clone(),
            payload: msg.payload.clone(),
            id: msg.id.clone(),
            origin_region: origin.to_owned(),
            skip_plain: !self.plain,
            queue_groups: self.queue_groups.clone(),
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    mode.as_str()
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
        let rtt = self.fed.rtt(&region)?;
        let (tx, rx) = oneshot::channel();
        // The remote side gets what is left after the round trip it costs to get there
        // and back.
        let Some(budget) = timeout.checked_sub(rtt).filter(|b| !b.is_zero()) else {
            let _ = tx.send(Err(error(
                ErrorCode::Timeout,
                format!(
                    "the {}-ms budget is below the RTT to region {region}",
                    timeout.as_millis()
                ),
                0,
            )));
            return Some(rx);
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.requests
            .lock()
            .insert(id, (region.clone(), Instant::now(), tx));
        self.costs
            .lock()
            .entry(region.clone())
            .or_default()
            .in_flight += 1;
        let request = RemoteRequest {
            id,
            subject: subject.to_owned(),
            headers,
            payload,
            deadline_ms: budget.as_millis().min(u128::from(u32::MAX)) as u32,
            origin_region: self.fed.region().to_owned(),
        };
        if !self.fed.try_send_data(&region, Kind::Request(request))
            && let Some((_, _, tx)) = self.requests.lock().remove(&id)
        {
            if let Some(c) = self.costs.lock().get_mut(&region) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            let _ = tx.send(Err(error(
                ErrorCode::ServiceError,
                format!("the link to region {region} is down or full"),
                0,
            )));
        }
        Some(rx)
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

    fn publish(&self, msg: &Delivery, local_interest: bool) -> Option<PublishReceipt> {
        let table = self.route_table();
        let (rule, _) = table.resolve(&msg.subject);
        if rule.mode == Mode::Local {
            return None;
        }
        let matches = self.remote.load().matches(&msg.subject);
        // Fast path: nobody elsewhere wants it.
        if matches.is_empty() {
            return None;
        }
        let targets = self.targets(rule, &msg.subject, local_interest, &matches);
        if targets.is_empty() {
            return None;
        }
        if rule.mode.spooled() {
            return Some(self.spool_publish(rule, targets, msg));
        }
        for t in targets {
            let counters = self.counters(&t.region);
            if self
                .fed
                .try_forward(&t.region, t.forward(msg, self.fed.region()))
            {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Forwarded);
            } else {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Dropped);
            }
        }
        None
    }

    fn links(&self) -> Vec<LinkStatus> {
        let mut regions: Vec<String> = self.counters.lock().keys().cloned().collect();
        for r in self.fed.connected_regions() {
            if !regions.contains(&r) {
                regions.push(r);
            }
        }
        for r in self.fed.peers() {
            if !regions.contains(&r) {
                regions.push(r);
            }
        }
        regions.sort();
        regions
            .into_iter()
            .map(|region| {
                let rtt = self.fed.rtt(&region);
                let c = self.counters(&region);
                LinkStatus {
                    state: if rtt.is_some() { "up" } else { "down" },
                    rtt_ms: rtt.map(|r| r.as_secs_f64() * 1e3),
                    forwarded: c.forwarded.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    received: c.received.load(Ordering::Relaxed),
                    region,
                }
            })
            .collect()
    }

    fn spools(&self) -> Vec<SpoolStatus> {
        let now = now_ms();
        let table = self.route_table();
        let depths = self.spool.spool.lock().depths();
        depths
            .into_iter()
            .map(|d| SpoolStatus {
                consistency: table
                    .rules()
                    .iter()
                    .find(|r| r.name == d.route)
                    .map_or("async", |r| mode_name(r.mode)),
                spool_depth: d.depth,
                replication_lag_ms: d.oldest_ms.map(|o| (now - o).max(0) as f64),
                route: d.route,
                region: d.region,
            })
            .collect()
    }

    fn explain(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        let table = self.route_table();
        let (rule, pattern) = table.resolve(subject);
        let spooled = rule.mode.spooled();
        let candidates = self.candidates(subject, false);
        let costs = self.costs.lock().clone();
        let depths = self.spool.spool.lock().depths();
        let regions: Vec<serde_json::Value> = candidates
            .iter()
            .map(|c| {
                let cost = costs.get(&c.region).copied().unwrap_or_default();
                serde_json::json!({
                    "region": c.region,
                    "interest": c.interest,
                    "link": if c.up { "up" } else { "down" },
                    "rtt_ms": self.fed.rtt(&c.region).map(|r| r.as_secs_f64() * 1e3),
                    "service_ms": cost.service_us / 1e3,
                    "in_flight": cost.in_flight,
                    "cost_ms": c.cost_us.map(|us| us / 1e3),
                    "spool_depth": depths.iter().find(|d| d.region == c.region && d.route == rule.name).map_or(0, |d| d.depth),
                })
            })
            .collect();
        // Explaining must not move the damping state real traffic uses.
        let mut damping = self.damping.lock();
        let mut scratch = Damping::default();
        std::mem::swap(&mut *damping, &mut scratch);
        let cands_pub = self.candidates(
            subject,
            spooled || rule.policy == crate::routes::Policy::Broadcast,
        );
        let publish = choose(
            rule,
            Traffic::Publish,
            local_interest,
            &cands_pub,
            &mut scratch,
            &mut rand::rng(),
        );
        let request = choose(
            rule,
            Traffic::Request,
            false,
            &candidates,
            &mut scratch,
            &mut rand::rng(),
        );
        std::mem::swap(&mut *damping, &mut scratch);
        serde_json::json!({
            "route": {
                "name": rule.name,
                "version": rule.version,
                "matched_pattern": pattern,
                "policy": rule.policy.describe(),
                "consistency": mode_name(rule.mode),
                "failover": rule.failover,
                "sync_quorum": rule.sync_quorum,
                "sync_timeout_ms": rule.sync_timeout_ms,
            },
            "config_version": self.router.policy().version,
            "regions": regions,
            "publish": {
                "local": publish.local,
                "regions": publish.regions,
                "reason": publish.reason,
            },
            "request_without_local_responder": {
                "regions": request.regions,
                "reason": request.reason,
            },
        })
    }
}
