//! Three federated regions on loopback for process-level tests: a control plane, one
//! `nexus gateway` per region, and a WAN emulator on every link (`ap-south` = A dials
//! `eu-west` = B and `us-east` = C through emulators in front of them; B dials C), with the
//! helpers those tests share (status, explain, clients, responders).

use std::net::SocketAddr;
use std::time::Duration;

use nexus_client::Client;
use nexus_load::wan::{Impairment, WanProxy};

use super::{ControlPlane, Gateway, eventually, federation_certs, http_get, nexusctl, tempdir};

pub const A: &str = "ap-south";
pub const B: &str = "eu-west";
pub const C: &str = "us-east";

/// Fields drop in order: gateways before the control plane they report to.
pub struct Cluster {
    pub a: Gateway,
    pub b: Gateway,
    pub c: Gateway,
    pub cp: ControlPlane,
    _cp_dir: tempdir::Dir,
    _certs: tempdir::Dir,
    /// Emulated links: A-B, A-C, B-C.
    pub ab: WanProxy,
    pub ac: WanProxy,
    pub bc: WanProxy,
}

pub fn certs() -> tempdir::Dir {
    federation_certs(&[A, B, C])
}

pub fn gateway(
    certs: &tempdir::Dir,
    cp: &ControlPlane,
    region: &str,
    peers: &[(&str, SocketAddr)],
) -> Gateway {
    gateway_with(certs, cp, region, peers, &[])
}

pub fn gateway_with(
    certs: &tempdir::Dir,
    cp: &ControlPlane,
    region: &str,
    peers: &[(&str, SocketAddr)],
    extra: &[&str],
) -> Gateway {
    let d = certs.0.display().to_string();
    let mut args: Vec<String> = vec![
        "--region".into(),
        region.into(),
        "--control-plane".into(),
        cp.url(),
        "--federation-listen".into(),
        "127.0.0.1:0".into(),
        "--federation-cert".into(),
        format!("{d}/{region}.pem"),
        "--federation-key".into(),
        format!("{d}/{region}-key.pem"),
        "--federation-ca".into(),
        format!("{d}/ca.pem"),
    ];
    for (peer, addr) in peers {
        args.push("--peer".into());
        args.push(format!("{peer}={addr}"));
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_with_args(&args)
}

pub fn delay(ms: u64) -> Impairment {
    Impairment {
        delay: Duration::from_millis(ms),
        ..Default::default()
    }
}

impl Cluster {
    /// One-way delays on A-B, A-C and B-C.
    pub async fn start(ab_ms: u64, ac_ms: u64, bc_ms: u64) -> Self {
        Self::start_with(ab_ms, ac_ms, bc_ms, &[]).await
    }

    /// Like `start`, with extra arguments for A's gateway.
    pub async fn start_with(ab_ms: u64, ac_ms: u64, bc_ms: u64, a_args: &[&str]) -> Self {
        let certs = certs();
        let cp_dir = tempdir::Dir::new("fed-modes-cp");
        let cp = ControlPlane::embedded(&cp_dir.0);
        let c = gateway(&certs, &cp, C, &[]);
        let c_fed = c.federation.expect("C federation address");
        let bc = WanProxy::start("127.0.0.1:0".parse().unwrap(), c_fed, delay(bc_ms))
            .await
            .unwrap();
        let ac = WanProxy::start("127.0.0.1:0".parse().unwrap(), c_fed, delay(ac_ms))
            .await
            .unwrap();
        let b = gateway(&certs, &cp, B, &[(C, bc.listen_addr)]);
        let ab = WanProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            b.federation.expect("B federation address"),
            delay(ab_ms),
        )
        .await
        .unwrap();
        let a = gateway_with(
            &certs,
            &cp,
            A,
            &[(B, ab.listen_addr), (C, ac.listen_addr)],
            a_args,
        );
        let cluster = Cluster {
            _certs: certs,
            _cp_dir: cp_dir,
            cp,
            a,
            b,
            c,
            ab,
            ac,
            bc,
        };
        for (gw, n) in [(&cluster.a, 2), (&cluster.b, 2), (&cluster.c, 2)] {
            assert!(
                eventually(Duration::from_secs(20), || links_up(gw) == n).await,
                "links did not come up: {}",
                status(gw)
            );
        }
        cluster
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        nexusctl(&self.cp, args)
    }

    /// Applies a route and waits until every gateway uses it.
    pub async fn route(&self, toml: &str, name: &str, subject: &str) {
        let dir = tempdir::Dir::new("route");
        let file = dir.0.join("route.toml");
        std::fs::write(&file, toml).unwrap();
        self.ctl(&["routes", "apply", "-f", file.to_str().unwrap()]);
        for gw in [&self.a, &self.b, &self.c] {
            assert!(
                eventually(
                    Duration::from_secs(10),
                    || explain(gw, subject)["federation"]["route"]["name"] == name
                )
                .await,
                "route {name} did not reach the gateway: {}",
                explain(gw, subject)
            );
        }
    }

    /// A responder for `subject` in every region, each answering with its region's name,
    /// once A knows about B's and C's.
    pub async fn responders_everywhere(
        &self,
        subject: &str,
    ) -> Vec<(Client, tokio::task::JoinHandle<()>)> {
        let mut out = Vec::new();
        for (gw, region) in [(&self.a, A), (&self.b, B), (&self.c, C)] {
            out.push(responder(gw, subject, region).await);
        }
        interest_known(&self.a, B, subject).await;
        interest_known(&self.a, C, subject).await;
        out
    }

    /// An `async` route "orders" (orders.>), a subscriber to it in C known to A, and C then
    /// cut off (A sees its link down).
    pub async fn async_subscriber_in_c_cut_off(&self) -> (Client, nexus_client::Subscription) {
        self.route(
            "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
            "orders",
            "orders.new",
        )
        .await;
        let sub_client = client(&self.c).await;
        let sub = sub_client.subscribe("orders.>").await.unwrap();
        sub_client.flush().await.unwrap();
        interest_known(&self.a, C, "orders.new").await;
        self.cut_c(true);
        assert!(eventually(Duration::from_secs(15), || link_state(&self.a, C) == "down").await);
        (sub_client, sub)
    }

    /// Cuts (or heals) both of C's links.
    pub fn cut_c(&self, cut: bool) {
        for w in [&self.ac, &self.bc] {
            if cut { w.cut() } else { w.heal() }
        }
    }
}

pub fn status(gw: &Gateway) -> serde_json::Value {
    let (code, body) = http_get(gw.metrics, "/v1/status").expect("GET /v1/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

pub fn explain(gw: &Gateway, subject: &str) -> serde_json::Value {
    let (code, body) =
        http_get(gw.metrics, &format!("/v1/explain?subject={subject}")).expect("GET /v1/explain");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("explain JSON")
}

pub fn links_up(gw: &Gateway) -> usize {
    status(gw)["links"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|l| l["state"] == "up").count())
}

pub fn link_state(gw: &Gateway, region: &str) -> String {
    status(gw)["links"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["region"] == region)
                .map(|l| l["state"].as_str().unwrap_or("").to_owned())
        })
        .unwrap_or_default()
}

pub async fn client(gw: &Gateway) -> Client {
    Client::builder(&gw.url())
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// Waits until `from` knows that `region` has interest in `subject`.
pub async fn interest_known(from: &Gateway, region: &str, subject: &str) {
    assert!(
        eventually(Duration::from_secs(10), || {
            explain(from, subject)["federation"]["regions"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|c| c["region"] == region && c["interest"] == true)
                })
        })
        .await,
        "{region}'s interest in {subject} did not reach the gateway: {}",
        explain(from, subject)
    );
}

/// Serves `subject` answering with `region`'s name.
pub async fn responder(
    gw: &Gateway,
    subject: &str,
    region: &'static str,
) -> (Client, tokio::task::JoinHandle<()>) {
    let c = client(gw).await;
    let mut sub = c.subscribe(subject).await.unwrap();
    let server = c.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next_message().await {
            let _ = server.reply(&m, region.as_bytes().to_vec()).await;
        }
    });
    c.flush().await.unwrap();
    (c, task)
}

pub async fn who_answers(c: &Client, subject: &str) -> String {
    let m = c.request(subject, b"?".to_vec()).await.expect("request");
    String::from_utf8_lossy(&m.payload).into_owned()
}

/// Most of `n` requests answered by one region.
pub async fn majority(c: &Client, subject: &str, n: usize) -> String {
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..n {
        *counts.entry(who_answers(c, subject).await).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0
}

/// Collects what a subscription received until `quiet` passes without a message.
pub async fn drain(sub: &mut nexus_client::Subscription, quiet: Duration) -> Vec<u32> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next_message()).await {
        out.push(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
    }
    out
}
