//! The monitor: one task that, every poll interval, asks the control plane for the topology
//! (`GetTopology`) and every live gateway for its `GET /v1/status`, turns counters into rates
//! (the difference between two polls), decides the health of gateways, regions and
//! federation links, and publishes the result as a [`Snapshot`]. Open topology pages receive
//! each snapshot over server-sent events ([`events`]).
//!
//! Health rules:
//! - a gateway is up when its `/v1/status` answers (or, for a gateway without that endpoint,
//!   its `/readyz` answers 200), down otherwise;
//! - a region is up when at least one of its gateways is, down when none is (or it has none);
//! - a link is down when either region has no live gateway or a live end reports it down, up
//!   when a live end reports it up, and unknown when nobody reports on it (gateways without
//!   `/v1/status`). Links are every pair of regions whose gateways federate (have a
//!   federation address), plus any a gateway reports; once seen a link stays on the map.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nexus_proto::v1::{GatewayInfo, GetTopologyRequest};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::admin::AdminConnector;
use super::time::{fmt_ms, now_ms};
use crate::model::*;

/// One poll's result.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub view: TopologyView,
    /// Full status per gateway id, for gateways that report one.
    pub statuses: HashMap<String, GatewayStatus>,
}

/// What a gateway's HTTP endpoint said.
enum Probe {
    Status(Box<GatewayStatus>),
    /// No `/v1/status` (404), but `/readyz` answered 200.
    ReadyOnly,
    Down(String),
}

/// What one gateway said about its link to another region.
struct LinkReport {
    state: String,
    rtt_ms: Option<f64>,
    forwarded_per_s: f64,
    dropped: u64,
    lost_in_flight: u64,
    unconfirmed: u64,
    reporter: String,
}

/// Counters from the previous poll, for rates.
struct Previous {
    at: Instant,
    published: u64,
    delivered: u64,
    /// forwarded per peer region.
    forwarded: HashMap<String, u64>,
}

pub struct Monitor {
    admin: AdminConnector,
    /// The console's own key; when None, `login_key` is used.
    own_key: Option<String>,
    login_key: Mutex<Option<String>>,
    tx: watch::Sender<Arc<Snapshot>>,
    http: Client<HttpConnector, Empty<Bytes>>,
    state: Mutex<PollState>,
}

#[derive(Default)]
struct PollState {
    previous: HashMap<String, Previous>,
    known_links: BTreeSet<(String, String)>,
    /// Every gateway seen, with when it was last registered: one that disappears from the
    /// control plane (its lease expired) stays on the map as down for [`REMEMBER_GONE`].
    seen: HashMap<String, (GatewayInfo, Instant)>,
}

/// How long a gateway that is no longer registered is still shown (as down).
const REMEMBER_GONE: Duration = Duration::from_secs(600);

impl Monitor {
    pub fn new(admin: AdminConnector, own_key: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Self {
            admin,
            own_key,
            login_key: Mutex::new(None),
            tx: watch::Sender::new(Arc::new(Snapshot::default())),
            http: Client::builder(TokioExecutor::new()).build(connector),
            state: Mutex::new(PollState::default()),
        }
    }

    /// A login succeeded with `key`: the poll uses it unless the console has its own.
    pub fn logged_in_with(&self, key: Option<String>) {
        if key.is_some() {
            *self.login_key.lock() = key;
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The latest snapshot; waits (up to 3 s) for the first poll if none has completed.
    pub async fn latest(&self) -> Arc<Snapshot> {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            rx.wait_for(|s| !s.view.polled_at.is_empty()),
        )
        .await;
        rx.borrow().clone()
    }

    /// Polls every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let snapshot = tokio::select! {
                _ = stop.cancelled() => return,
                s = self.poll() => s,
            };
            self.tx.send_replace(Arc::new(snapshot));
        }
    }

    async fn poll(&self) -> Snapshot {
        let key = self
            .own_key
            .clone()
            .or_else(|| self.login_key.lock().clone());
        let topology = match self.admin.client(key.as_deref()) {
            Ok(mut c) => c
                .get_topology(GetTopologyRequest {})
                .await
                .map(tonic::Response::into_inner),
            Err(e) => Err(e),
        };
        let topology = match topology {
            Ok(t) => t,
            Err(status) => {
                // Keep showing what was last known, marked as stale.
                let mut last = (**self.tx.borrow()).clone();
                last.view.error = Some(match status.code() {
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => format!(
                        "the control plane refused the topology request ({}): log in with an admin key, or start the console with one",
                        status.message()
                    ),
                    _ => format!("cannot reach the control plane: {}", status.message()),
                });
                last.view.polled_at = fmt_ms(now_ms());
                return last;
            }
        };
        let gateways: Vec<GatewayInfo> = topology
            .regions
            .iter()
            .flat_map(|r| r.gateways.iter().cloned())
            .collect();
        let probes =
            futures::future::join_all(gateways.iter().map(|g| self.probe(&g.metrics_addr))).await;
        let regions: Vec<String> = topology
            .regions
            .iter()
            .filter_map(|r| r.region.as_ref().map(|r| r.name.clone()))
            .collect();
        let mut state = self.state.lock();
        build(
            &mut state,
            &regions,
            gateways.into_iter().zip(probes).collect(),
            topology.config_version,
            Instant::now(),
        )
    }

    async fn probe(&self, metrics_addr: &str) -> Probe {
        if metrics_addr.is_empty() {
            return Probe::Down("registered without a metrics address".into());
        }
        match self.get(metrics_addr, "/v1/status").await {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<GatewayStatus>(&body) {
                Ok(s) => Probe::Status(Box::new(s)),
                Err(e) => Probe::Down(format!("/v1/status is not the expected JSON: {e}")),
            },
            Ok((StatusCode::NOT_FOUND, _)) => match self.get(metrics_addr, "/readyz").await {
                Ok((StatusCode::OK, _)) => Probe::ReadyOnly,
                Ok((code, _)) => Probe::Down(format!("/readyz answered {code}")),
                Err(e) => Probe::Down(e),
            },
            Ok((code, _)) => Probe::Down(format!("/v1/status answered {code}")),
            Err(e) => Probe::Down(e),
        }
    }

    async fn get(&self, addr: &str, path: &str) -> Result<(StatusCode, Bytes), String> {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let fetch = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            let code = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((code, body))
        };
        tokio::time::timeout(Duration::from_millis(800), fetch)
            .await
            .map_err(|_| "no answer within 800 ms".to_owned())?
    }
}

/// Turns one poll into a snapshot (pure apart from `state`, which carries counters and the
/// links seen so far from one poll to the next).
fn build(
    state: &mut PollState,
    regions: &[String],
    gateways: Vec<(GatewayInfo, Probe)>,
    config_version: i64,
    now: Instant,
) -> Snapshot {
    let mut gateways = gateways;
    for (info, _) in &gateways {
        state.seen.insert(info.id.clone(), (info.clone(), now));
    }
    state
        .seen
        .retain(|_, (_, at)| now.duration_since(*at) < REMEMBER_GONE);
    let mut gone: Vec<_> = state
        .seen
        .values()
        .filter(|(info, _)| !gateways.iter().any(|(g, _)| g.id == info.id))
        .map(|(info, at)| {
            let why = format!(
                "no longer registered with the control plane (last seen {} s ago)",
                now.duration_since(*at).as_secs()
            );
            (info.clone(), Probe::Down(why))
        })
        .collect();
    gone.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    gateways.extend(gone);
    let mut statuses = HashMap::new();
    let mut views: Vec<GatewayView> = Vec::new();
    let mut previous = HashMap::new();
    let mut reports: HashMap<(String, String), Vec<LinkReport>> = HashMap::new();
    for (info, probe) in gateways {
        let mut view = GatewayView {
            id: info.id.clone(),
            region: info.region.clone(),
            adapter_addr: info.adapter_addr.clone(),
            metrics_addr: info.metrics_addr.clone(),
            federation_addr: info.federation_addr.clone(),
            config_version: info.config_version,
            health: Health::Up,
            has_status: false,
            problem: None,
            sessions: 0,
            subscriptions: 0,
            uptime_s: 0,
            published_per_s: 0.0,
            delivered_per_s: 0.0,
        };
        match probe {
            Probe::Down(why) => {
                view.health = Health::Down;
                view.problem = Some(why);
            }
            Probe::ReadyOnly => {}
            Probe::Status(s) => {
                view.has_status = true;
                view.sessions = s.sessions;
                view.subscriptions = s.subscriptions;
                view.uptime_s = s.uptime_s;
                let prev = state.previous.get(&info.id);
                let rate = |now_v: u64, prev_v: Option<u64>| match (prev, prev_v) {
                    (Some(p), Some(pv)) => {
                        let dt = now.duration_since(p.at).as_secs_f64();
                        if dt > 0.0 {
                            now_v.saturating_sub(pv) as f64 / dt
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                view.published_per_s = rate(s.messages.published, prev.map(|p| p.published));
                view.delivered_per_s = rate(s.messages.delivered, prev.map(|p| p.delivered));
                for l in &s.links {
                    let fwd = rate(
                        l.forwarded,
                        prev.and_then(|p| p.forwarded.get(&l.region).copied()),
                    );
                    reports
                        .entry((info.region.clone(), l.region.clone()))
                        .or_default()
                        .push(LinkReport {
                            state: l.state.clone(),
                            rtt_ms: l.rtt_ms,
                            forwarded_per_s: fwd,
                            dropped: l.dropped,
                            lost_in_flight: l
                                .dropped_by_reason
                                .get("link_lost")
                                .copied()
                                .unwrap_or(0),
                            unconfirmed: l.unconfirmed,
                            reporter: info.id.clone(),
                        });
                }
                previous.insert(
                    info.id.clone(),
                    Previous {
                        at: now,
                        published: s.messages.published,
                        delivered: s.messages.delivered,
                        forwarded: s
                            .links
                            .iter()
                            .map(|l| (l.region.clone(), l.forwarded))
                            .collect(),
                    },
                );
                statuses.insert(info.id.clone(), *s);
            }
        }
        views.push(view);
    }
    state.previous = previous;

    let mut all_regions: BTreeSet<String> = regions.iter().cloned().collect();
    all_regions.extend(views.iter().map(|g| g.region.clone()));
    let region_views: Vec<RegionView> = all_regions
        .iter()
        .map(|name| {
            let gateways: Vec<GatewayView> = views
                .iter()
                .filter(|g| &g.region == name)
                .cloned()
                .collect();
            let health = if gateways.iter().any(|g| g.health == Health::Up) {
                Health::Up
            } else {
                Health::Down
            };
            RegionView {
                name: name.clone(),
                health,
                msgs_per_s: gateways
                    .iter()
                    .map(|g| g.published_per_s)
                    .fold(0.0, |a, b| a + b),
                gateways,
            }
        })
        .collect();

    // Links: federating regions pairwise, plus whatever gateways report.
    let federating: Vec<&String> = region_views
        .iter()
        .filter(|r| r.gateways.iter().any(|g| !g.federation_addr.is_empty()))
        .map(|r| &r.name)
        .collect();
    for (i, a) in federating.iter().enumerate() {
        for b in &federating[i + 1..] {
            state.known_links.insert(ordered(a, b));
        }
    }
    for (from, to) in reports.keys() {
        if from != to {
            state.known_links.insert(ordered(from, to));
        }
    }
    let live = |region: &str| {
        region_views
            .iter()
            .any(|r| r.name == region && r.health == Health::Up)
    };
    let links = state
        .known_links
        .iter()
        .map(|(a, b)| {
            let ends: Vec<_> = reports
                .get(&(a.clone(), b.clone()))
                .into_iter()
                .chain(reports.get(&(b.clone(), a.clone())))
                .flatten()
                .collect();
            let msgs_per_s = ends
                .iter()
                .map(|e| e.forwarded_per_s)
                .fold(0.0, |a, b| a + b);
            let dropped = ends.iter().map(|e| e.dropped).sum();
            let lost_in_flight = ends.iter().map(|e| e.lost_in_flight).sum();
            let unconfirmed = ends.iter().map(|e| e.unconfirmed).sum();
            let up: Vec<_> = ends.iter().filter(|e| e.state == "up").collect();
            let rtt_ms = up
                .iter()
                .filter_map(|e| e.rtt_ms)
                .min_by(|x, y| x.total_cmp(y));
            let (health, note) = if !live(a) || !live(b) {
                let dead = if live(a) { b } else { a };
                (Health::Down, format!("no live gateway in {dead}"))
            } else if let Some(e) = ends.iter().find(|e| e.state != "up") {
                (
                    Health::Down,
                    format!("{} reports the link {}", e.reporter, e.state),
                )
            } else if !up.is_empty() {
                (
                    Health::Up,
                    format!(
                        "up, reported by {}",
                        up.iter()
                            .map(|e| e.reporter.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                (
                    Health::Unknown,
                    "both regions are up, but no gateway reports this link (no /v1/status yet)"
                        .to_owned(),
                )
            };
            LinkView {
                a: a.clone(),
                b: b.clone(),
                // An RTT measured before the link went down would mislead.
                rtt_ms: if health == Health::Up { rtt_ms } else { None },
                health,
                msgs_per_s,
                dropped,
                lost_in_flight,
                unconfirmed,
                note,
            }
        })
        .collect();

    Snapshot {
        view: TopologyView {
            regions: region_views,
            links,
            config_version,
            polled_at: fmt_ms(now_ms()),
            error: None,
        },
        statuses,
    }
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// `GET /events/topology`: a server-sent event with the topology (JSON) after every poll,
/// until the client goes away or the console shuts down.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = state.shutdown.clone();
    let stream = WatchStream::new(state.monitor.subscribe())
        .filter(|s| futures::future::ready(!s.view.polled_at.is_empty()))
        .map(|s| {
            Ok(Event::default()
                .data(serde_json::to_string(&s.view).unwrap_or_else(|_| "{}".into())))
        })
        .take_until(async move { stop.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str, region: &str) -> GatewayInfo {
        GatewayInfo {
            id: id.into(),
            region: region.into(),
            metrics_addr: "127.0.0.1:1".into(),
            federation_addr: "127.0.0.1:2".into(),
            ..Default::default()
        }
    }

    fn status(region: &str, peer: &str, state: &str, forwarded: u64) -> Probe {
        Probe::Status(Box::new(GatewayStatus {
            region: region.into(),
            messages: MessageCounts {
                published: forwarded,
                delivered: 0,
            },
            links: vec![LinkStatus {
                region: peer.into(),
                state: state.into(),
                rtt_ms: Some(1.5),
                forwarded,
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    #[test]
    fn links_follow_reports_and_dead_regions() {
        let mut st = PollState::default();
        let regions = vec!["a".to_owned(), "b".to_owned()];
        let t0 = Instant::now();
        let s = build(
            &mut st,
            &regions,
            vec![
                (gw("ga", "a"), status("a", "b", "up", 10)),
                (gw("gb", "b"), status("b", "a", "up", 0)),
            ],
            1,
            t0,
        );
        assert_eq!(s.view.links.len(), 1);
        assert_eq!(s.view.links[0].health, Health::Up);
        assert_eq!(s.view.links[0].rtt_ms, Some(1.5));

        // One second later a forwarded 20 more; then b's gateway stops answering.
        let s = build(
            &mut st,
            &regions,
            vec![
                (gw("ga", "a"), status("a", "b", "up", 30)),
                (gw("gb", "b"), Probe::Down("unreachable".into())),
            ],
            1,
            t0 + Duration::from_secs(1),
        );
        let link = &s.view.links[0];
        assert_eq!(link.health, Health::Down, "{link:?}");
        assert!((link.msgs_per_s - 20.0).abs() < 1e-9);
        assert_eq!(s.view.regions[1].health, Health::Down);

        // b's gateway disappears from the control plane: the link stays, down.
        let s = build(
            &mut st,
            &regions,
            vec![(gw("ga", "a"), status("a", "b", "down", 30))],
            1,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(s.view.links.len(), 1);
        assert_eq!(s.view.links[0].health, Health::Down);
        assert_eq!(s.view.links[0].rtt_ms, None);
        let gb = &s.view.regions[1].gateways[0];
        assert_eq!((gb.id.as_str(), gb.health), ("gb", Health::Down));
        assert!(
            gb.problem
                .as_deref()
                .unwrap()
                .contains("no longer registered")
        );
    }

    #[test]
    fn links_without_reports_are_unknown() {
        let mut st = PollState::default();
        let s = build(
            &mut st,
            &["a".to_owned(), "b".to_owned()],
            vec![
                (gw("ga", "a"), Probe::ReadyOnly),
                (gw("gb", "b"), Probe::ReadyOnly),
            ],
            1,
            Instant::now(),
        );
        assert_eq!(s.view.links[0].health, Health::Unknown);
        assert!(s.view.regions.iter().all(|r| r.health == Health::Up));
    }
}
