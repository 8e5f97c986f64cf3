//! The router and balancer together on paused tokio time: responders with different
//! latencies, failing responders, and members joining, all deterministic in time (no real
//! sleeping) and driven through the same `Router` the gateway's sessions use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nexus_gateway::GatewayConfig;
use nexus_gateway::connection::Connection;
use nexus_gateway::metrics::GatewayMetrics;
use nexus_gateway::outbound::Outbound;
use nexus_gateway::router::{Router, Waiter, error};
use nexus_proto::v1::{ErrorCode, frame::Kind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// How a simulated responder behaves.
#[derive(Clone, Copy)]
enum Behaviour {
    Latency(Duration),
    Fail,
}

struct Responders {
    router: Arc<Router>,
    served: Arc<Mutex<HashMap<&'static str, u32>>>,
    behaviour: Arc<Mutex<HashMap<&'static str, Behaviour>>>,
    conns: Vec<Arc<Connection>>,
}

impl Responders {
    fn new() -> Self {
        let mut cfg = GatewayConfig::default();
        cfg.balancer.decay_ms = 2_000;
        let router = Arc::new(Router::new(Arc::new(cfg), Arc::new(GatewayMetrics::new())));
        Self {
            router,
            served: Default::default(),
            behaviour: Default::default(),
            conns: Vec::new(),
        }
    }

    /// Adds a responder in queue group `workers` on subject `svc`.
    fn add(&mut self, name: &'static str, behaviour: Behaviour) {
        let (outbound, mut stream) = Outbound::new(16 << 20);
        let conn = Arc::new(Connection::new(self.router.next_id(), outbound));
        self.router.subscribe(&conn, 1, "svc", "workers");
        self.behaviour.lock().insert(name, behaviour);
        self.served.lock().insert(name, 0);
        let router = self.router.clone();
        let served = self.served.clone();
        let behaviours = self.behaviour.clone();
        let me = conn.clone();
        tokio::spawn(async move {
            while let Some(Ok(batch)) = stream.next().await {
                for f in batch.into_frames().unwrap() {
                    let Some(Kind::Msg(m)) = f.kind else { continue };
                    *served.lock().get_mut(name).unwrap() += 1;
                    let seq = Router::inbox_seq(&m.reply_to).unwrap();
                    let behaviour = behaviours.lock()[name];
                    let router = router.clone();
                    let me = me.clone();
                    tokio::spawn(async move {
                        match behaviour {
                            Behaviour::Latency(d) => {
                                tokio::time::sleep(d).await;
                                router.complete(seq, Some(me.id), Ok((Vec::new(), m.payload)));
                            }
                            Behaviour::Fail => {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                router.complete(
                                    seq,
                                    Some(me.id),
                                    Err(error(ErrorCode::ServiceError, "boom", 0)),
                                );
                            }
                        }
                    });
                }
            }
        });
        self.conns.push(conn);
    }

    /// Sends `n` requests, `concurrency` at a time, and returns how many each responder served.
    async fn run(&self, n: u32, concurrency: u32) -> HashMap<&'static str, u32> {
        for v in self.served.lock().values_mut() {
            *v = 0;
        }
        let mut left = n;
        while left > 0 {
            let batch = left.min(concurrency);
            let mut waits = Vec::new();
            for _ in 0..batch {
                let (tx, rx) = oneshot::channel();
                self.router
                    .request(
                        Waiter::Unary(tx),
                        "svc",
                        Vec::new(),
                        Bytes::from_static(b"x"),
                        Bytes::new(),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|(_, e)| e)
                    .expect("routed");
                waits.push(rx);
            }
            for rx in waits {
                let _ = rx.await;
            }
            left -= batch;
        }
        self.served.lock().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn fast_members_take_most_of_the_traffic() {
    let mut r = Responders::new();
    r.add("1ms", Behaviour::Latency(Duration::from_millis(1)));
    r.add("10ms", Behaviour::Latency(Duration::from_millis(10)));
    r.add("100ms", Behaviour::Latency(Duration::from_millis(100)));
    // Warm up so every member has samples, then measure.
    r.run(300, 4).await;
    let served = r.run(3000, 4).await;
    let total: u32 = served.values().sum();
    assert_eq!(total, 3000);
    let share = |name| served[name] as f64 / total as f64;
    assert!(share("1ms") > 0.55, "{served:?}");
    assert!(share("1ms") > share("10ms"), "{served:?}");
    assert!(share("100ms") < 0.05, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_member_is_ejected_and_comes_back_after_its_period() {
    let mut r = Responders::new();
    r.add("good-a", Behaviour::Latency(Duration::from_millis(5)));
    r.add("good-b", Behaviour::Latency(Duration::from_millis(5)));
    r.add("bad", Behaviour::Latency(Duration::from_millis(5)));
    r.run(100, 1).await;
    // A healthy member starts failing every request.
    r.behaviour.lock().insert("bad", Behaviour::Fail);
    let served = r.run(200, 1).await;
    assert!(served["bad"] >= 5, "{served:?}");
    assert!(
        r.router
            .metrics
            .balancer_ejections
            .get_or_create(&nexus_gateway::metrics::EjectionLabels {
                reason: nexus_gateway::metrics::EjectionReason::ConsecutiveFailures
            })
            .get()
            >= 1
    );
    // While ejected (30 s base period) the bad member gets nothing.
    let served = r.run(200, 1).await;
    assert_eq!(served["bad"], 0, "{served:?}");
    // It recovers; after the ejection period it is tried again.
    r.behaviour
        .lock()
        .insert("bad", Behaviour::Latency(Duration::from_millis(5)));
    tokio::time::sleep(Duration::from_secs(31)).await;
    let served = r.run(300, 1).await;
    assert!(served["bad"] > 30, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_member_gets_traffic() {
    let mut r = Responders::new();
    r.add("old-a", Behaviour::Latency(Duration::from_millis(5)));
    r.add("old-b", Behaviour::Latency(Duration::from_millis(5)));
    r.run(500, 4).await;
    r.add("new", Behaviour::Latency(Duration::from_millis(5)));
    let served = r.run(600, 4).await;
    assert!(served["new"] > 100, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn no_members_means_no_responders_and_timeouts_are_failures() {
    let r = Responders::new();
    let (tx, _rx) = oneshot::channel();
    let err = r
        .router
        .request(
            Waiter::Unary(tx),
            "svc",
            Vec::new(),
            Bytes::new(),
            Bytes::new(),
            Duration::from_secs(1),
        )
        .await
        .map(|_| ())
        .unwrap_err()
        .1;
    assert!(err.to_string().contains("no responders"), "{err}");
}
