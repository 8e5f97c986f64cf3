//! Route policies and consistency modes across three regions, with every federation link
//! running through the WAN emulator (real UDP proxies on loopback adding delay and cutting
//! links), a real control plane holding the routes, and real gateway processes:
//! (a) `local_first` requests move to the nearest region and follow changing delays;
//! (b) `async`: 10,000 messages published while a region is cut off all arrive there once,
//!     in order, after healing;
//! (c) `best_effort` drops what is published during a cut, and the metrics count it;
//! (d) `sync` publishes fail with a timeout during a cut and succeed after it;
//! (e) `kill -9` of the publishing gateway during async replication loses and duplicates
//!     nothing.
//!
//! Regions: `ap-south` (A) dials the two others (names sorting first dial), `eu-west` (B)
//! dials `us-east` (C). Each dialled address is an emulator in front of the real one.

mod common;

use std::time::{Duration, Instant};

use common::regions::*;
use common::{ControlPlane, Gateway, eventually, tempdir};
use nexus_load::wan::Impairment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_requests_go_to_the_nearest_region_and_follow_delay_changes() {
    // A-B 5 ms, A-C 40 ms, B-C 120 ms one way.
    let cl = Cluster::start(5, 40, 120).await;
    cl.route(
        "name = \"svc\"\nsubjects = [\"svc.>\"]\npolicy = \"local_first\"\nconsistency = \"best_effort\"\n",
        "svc",
        "svc.echo",
    )
    .await;
    let mut responders = cl.responders_everywhere("svc.echo").await;
    let (local, local_task) = responders.remove(0);
    let caller = client(&cl.a).await;
    assert_eq!(
        majority(&caller, "svc.echo", 20).await,
        A,
        "local responders first"
    );

    // The local service stops: requests go to the nearest region, B (5 ms).
    local_task.abort();
    local.close().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            explain(&cl.a, "svc.echo")["local"]
                .as_array()
                .is_some_and(|l| l.is_empty())
        })
        .await
    );
    assert_eq!(
        majority(&caller, "svc.echo", 20).await,
        B,
        "{}",
        explain(&cl.a, "svc.echo")
    );

    // The delays change: A-B becomes 120 ms and A-C 5 ms. Traffic shifts to C once the
    // link RTTs reflect it.
    cl.ab.set(delay(120));
    cl.ac.set(delay(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if majority(&caller, "svc.echo", 10).await == C {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests did not shift to {C}: {}",
            explain(&cl.a, "svc.echo")
        );
    }
    // And stay there (damping: no flapping back and forth).
    assert_eq!(majority(&caller, "svc.echo", 20).await, C);
    // `nexusctl routes explain` says where and why.
    let text = cl.ctl(&["routes", "explain", "svc.echo", "--from", A]);
    assert!(
        text.contains("route svc") && text.contains("local_first"),
        "{text}"
    );
    assert!(
        text.contains(&format!("request with no local responder: {C}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_messages_published_during_a_cut_arrive_once_in_order_after_healing() {
    let cl = Cluster::start(2, 2, 2).await;
    let (_sub_client, mut sub) = cl.async_subscriber_in_c_cut_off().await;
    let publisher = client(&cl.a).await;
    const N: u32 = 10_000;
    // In order; the last one is acknowledged, which (the spool commits in order) means
    // every one before it is on disk too.
    for i in 0..N - 1 {
        publisher
            .publish(&format!("orders.s{}", i % 4), i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let last = N - 1;
    publisher
        .publish_acked(
            &format!("orders.s{}", last % 4),
            last.to_be_bytes().to_vec(),
        )
        .await
        .expect("async publish acknowledged once spooled");
    let st = status(&cl.a);
    let depth: u64 = st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["region"] == C)
        .map(|r| r["spool_depth"].as_u64().unwrap())
        .sum();
    assert_eq!(depth, u64::from(N), "{st}");
    assert!(
        cl.a.metric(
            "nexus_spool_depth",
            &["route=\"orders\"", "region=\"us-east\""]
        ) >= 1.0
    );

    cl.cut_c(false);
    let mut last = std::collections::HashMap::<String, Option<u32>>::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N as usize {
        let m = tokio::time::timeout_at(deadline.into(), sub.next_message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} arrived: {}", seen.len(), status(&cl.a)))
            .expect("subscription open");
        let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        assert!(seen.insert(i), "message {i} arrived twice");
        let prev = last.entry(m.subject.to_string()).or_default();
        assert!(
            prev.is_none_or(|p| i > p),
            "out of order on {}: {i} after {prev:?}",
            m.subject
        );
        *prev = Some(i);
    }
    // Nothing more arrives (no duplicates later), and the spool empties.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_message())
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(10), || status(&cl.a)["routes"]
            .as_array()
            .is_some_and(|r| r.is_empty()))
        .await,
        "{}",
        status(&cl.a)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_loses_messages_published_during_a_cut_and_counts_them() {
    let cl = Cluster::start(2, 2, 2).await;
    // No route: best effort is the default.
    let sub_client = client(&cl.c).await;
    let mut sub = sub_client.subscribe("metrics.>").await.unwrap();
    sub_client.flush().await.unwrap();
    interest_known(&cl.a, C, "metrics.cpu").await;
    let publisher = client(&cl.a).await;
    publisher
        .publish_acked("metrics.cpu", b"before".to_vec())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"before");

    cl.cut_c(true);
    assert!(eventually(Duration::from_secs(15), || link_state(&cl.a, C) == "down").await);
    let dropped =
        |gw: &Gateway| gw.metric("nexus_federation_messages_total", &["outcome=\"dropped\""]);
    let before = dropped(&cl.a);
    const N: usize = 300;
    for i in 0..N {
        publisher
            .publish_acked("metrics.cpu", format!("during {i}").into_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        dropped(&cl.a) - before,
        N as f64,
        "every message for the cut region is counted"
    );
    let st = status(&cl.a);
    let link = st["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["region"] == C)
        .unwrap()
        .clone();
    assert!(link["dropped"].as_u64().unwrap() >= N as u64, "{link}");

    cl.cut_c(false);
    assert!(eventually(Duration::from_secs(20), || link_state(&cl.a, C) == "up").await);
    interest_known(&cl.a, C, "metrics.cpu").await;
    publisher
        .publish_acked("metrics.cpu", b"after".to_vec())
        .await
        .unwrap();
    // The first thing C gets after the cut is "after": what was published during it is gone.
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_publishes_time_out_during_a_cut_and_succeed_after_it() {
    let cl = Cluster::start(2, 2, 2).await;
    cl.route(
        "name = \"ledger\"\nsubjects = [\"ledger.>\"]\npolicy = \"broadcast\"\nconsistency = \"sync\"\nsync_timeout_ms = 800\n",
        "ledger",
        "ledger.entry",
    )
    .await;
    let mut subs = Vec::new();
    for (gw, region) in [(&cl.b, B), (&cl.c, C)] {
        let c = client(gw).await;
        subs.push((c.subscribe("ledger.>").await.unwrap(), c.clone()));
        c.flush().await.unwrap();
        interest_known(&cl.a, region, "ledger.entry").await;
    }
    let publisher = client(&cl.a).await;
    publisher
        .publish_acked("ledger.entry", b"1".to_vec())
        .await
        .expect("both regions confirm");

    cl.cut_c(true);
    let started = Instant::now();
    let err = publisher
        .publish_acked("ledger.entry", b"2".to_vec())
        .await
        .expect_err("C cannot confirm during the cut");
    let text = err.to_string();
    assert!(
        text.contains("sync replication timed out") && text.contains(C),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timed out after the route's 800 ms, not later"
    );

    cl.cut_c(false);
    assert!(eventually(Duration::from_secs(20), || links_up(&cl.a) == 2).await);
    publisher
        .publish_acked("ledger.entry", b"3".to_vec())
        .await
        .expect("confirmed after healing");
    // C got all three (the timed-out one was still delivered: it stayed spooled).
    let (sub_c, _) = &mut subs[1];
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub_c.next_message())
            .await
            .unwrap()
            .unwrap();
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got, vec!["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_async_replication_loses_and_duplicates_nothing() {
    let mut cl = Cluster::start(2, 60, 2).await;
    cl.route(
        "name = \"events\"\nsubjects = [\"events.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
        "events",
        "events.x",
    )
    .await;
    let sub_client = client(&cl.c).await;
    let mut sub = sub_client.subscribe("events.>").await.unwrap();
    sub_client.flush().await.unwrap();
    interest_known(&cl.a, C, "events.x").await;
    // A slow, lossy link to C keeps replication busy.
    cl.ac.set(Impairment {
        delay: Duration::from_millis(60),
        loss: 0.05,
        ..Default::default()
    });
    let publisher = client(&cl.a).await;
    const N: u32 = 3_000;
    for i in 0..N - 1 {
        publisher
            .publish("events.x", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    publisher
        .publish_acked("events.x", (N - 1).to_be_bytes().to_vec())
        .await
        .expect("spooled");
    // Replication is under way: some messages still wait in the spool.
    let depth: u64 = status(&cl.a)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spool_depth"].as_u64().unwrap())
        .sum();
    assert!(depth > 0, "the kill should happen mid-replication");
    publisher.close().await;
    cl.a.kill();
    cl.ac.set(delay(2));
    cl.a.restart();
    let mut seen = std::collections::HashSet::new();
    let mut prev: Option<u32> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N as usize {
        let m = tokio::time::timeout_at(deadline.into(), sub.next_message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} arrived", seen.len()))
            .expect("subscription open");
        let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        assert!(seen.insert(i), "message {i} arrived twice");
        assert!(
            prev.is_none_or(|p| i > p),
            "out of order: {i} after {prev:?}"
        );
        prev = Some(i);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_message())
            .await
            .is_err(),
        "a duplicate arrived late"
    );
    let dups = cl.c.metric(
        "nexus_federation_messages_total",
        &["outcome=\"duplicate\""],
    );
    eprintln!("duplicates discarded at the receiver after the restart: {dups}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_span_regions_local_members_first_then_the_cheapest_region() {
    // A-B 2 ms, A-C 40 ms.
    let cl = Cluster::start(2, 40, 2).await;
    let wb = client(&cl.b).await;
    let mut worker_b = wb.queue_subscribe("jobs.>", "workers").await.unwrap();
    wb.flush().await.unwrap();
    let wc = client(&cl.c).await;
    let mut worker_c = wc.queue_subscribe("jobs.>", "workers").await.unwrap();
    let mut audit_c = wc.subscribe("jobs.>").await.unwrap();
    wc.flush().await.unwrap();
    for region in [B, C] {
        interest_known(&cl.a, region, "jobs.resize").await;
    }
    let publisher = client(&cl.a).await;
    const N: u32 = 200;
    for i in 0..N {
        publisher
            .publish("jobs.resize", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let quiet = Duration::from_millis(700);
    let (got_b, got_c, audit) = tokio::join!(
        drain(&mut worker_b, quiet),
        drain(&mut worker_c, quiet),
        drain(&mut audit_c, quiet)
    );
    // Each job to exactly one worker in one region: the cheaper one, B.
    assert_eq!(
        got_b.len() + got_c.len(),
        N as usize,
        "b {} c {}",
        got_b.len(),
        got_c.len()
    );
    assert_eq!(got_b, (0..N).collect::<Vec<_>>(), "B is 2 ms away, C 40 ms");
    // Plain subscribers elsewhere still get everything.
    assert_eq!(audit, (0..N).collect::<Vec<_>>());

    // A local member appears: it takes the group's messages, no other region does.
    let wa = client(&cl.a).await;
    let mut worker_a = wa.queue_subscribe("jobs.>", "workers").await.unwrap();
    wa.flush().await.unwrap();
    for i in N..2 * N {
        publisher
            .publish("jobs.resize", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let (got_a, got_b, got_c, audit) = tokio::join!(
        drain(&mut worker_a, quiet),
        drain(&mut worker_b, quiet),
        drain(&mut worker_c, quiet),
        drain(&mut audit_c, quiet)
    );
    assert_eq!(got_a, (N..2 * N).collect::<Vec<_>>());
    assert!(
        got_b.is_empty() && got_c.is_empty(),
        "b {} c {}",
        got_b.len(),
        got_c.len()
    );
    assert_eq!(audit.len(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_find_their_peers_through_control_plane_registrations() {
    let certs = certs();
    let cp_dir = tempdir::Dir::new("fed-registry-cp");
    let cp = ControlPlane::embedded(&cp_dir.0);
    // No --peer at all: each gateway learns the others' federation addresses from the
    // control plane.
    let gws: Vec<Gateway> = [A, B, C]
        .iter()
        .map(|r| gateway(&certs, &cp, r, &[]))
        .collect();
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(20), || links_up(gw) == 2).await,
            "links did not come up from registrations: {}",
            status(gw)
        );
    }
    let sub_client = client(&gws[2]).await;
    let mut sub = sub_client.subscribe("hello.>").await.unwrap();
    sub_client.flush().await.unwrap();
    interest_known(&gws[0], C, "hello.world").await;
    client(&gws[0])
        .await
        .publish_acked("hello.world", b"via registry".to_vec())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"via registry");
}

/// The load harness's cross-region shape (publishers in one region, subscribers and
/// responders in another, through the emulator) runs end to end. Correctness only: nothing
/// lost, and latencies at least the emulated delay; the figures come from
/// `load-tests/run-cross-region.sh`, never from a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_harness_cross_region_scenarios_run_through_the_emulator() {
    use nexus_load::scenarios::{Kind, Workload, run_between};
    use nexus_load::target::Target;
    let cl = Cluster::start(10, 10, 10).await;
    let a: Target = format!("nexus://{}", cl.a.grpc).parse().unwrap();
    let b: Target = format!("nexus://{}", cl.b.grpc).parse().unwrap();
    let w = Workload {
        count: Some(300),
        drain: Duration::from_secs(5),
        ..Workload::default()
    };
    let pubsub = run_between(Kind::Pubsub, &a, &b, &w).await.unwrap();
    assert_eq!(
        (pubsub.delivered, pubsub.lost, pubsub.errors),
        (300, 0, 0),
        "{pubsub:?}"
    );
    assert!(
        pubsub.latency.p50_us >= 10_000.0,
        "one way is 10 ms: {pubsub:?}"
    );
    let req = run_between(
        Kind::Request,
        &a,
        &b,
        &Workload {
            count: Some(50),
            ..w.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!((req.delivered, req.errors), (50, 0), "{req:?}");
    assert!(
        req.latency.p50_us >= 20_000.0,
        "a round trip is 2 x 10 ms: {req:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_publishes_with_a_clear_error_and_keeps_what_it_has() {
    // 64 KiB of spool, overflow policy reject (the default).
    let cl = Cluster::start_with(2, 2, 2, &["--spool-max-bytes", "65536"]).await;
    let (_sub_client, mut sub) = cl.async_subscriber_in_c_cut_off().await;
    let publisher = client(&cl.a).await;
    let mut accepted = 0u32;
    let err = loop {
        match publisher
            .publish_acked(
                "orders.new",
                [accepted.to_be_bytes().to_vec(), vec![0u8; 1000]].concat(),
            )
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "64 KiB cannot hold 1000 messages of 1 KB");
    };
    let text = err.to_string();
    assert!(
        text.contains("replication spool is full") && text.contains("us-east"),
        "{text}"
    );
    assert!(accepted > 10, "{accepted}");
    // What was accepted is delivered after healing, and nothing else.
    cl.cut_c(false);
    for i in 0..accepted {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next_message())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {accepted} did not arrive"))
            .unwrap();
        assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), i);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_message())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_requests_go_to_their_region_then_fail_over_then_fall_back_to_local() {
    let cl = Cluster::start(2, 2, 2).await;
    cl.route(
        "name = \"billing\"\nsubjects = [\"billing.>\"]\npolicy = \"pinned\"\npinned_region = \"us-east\"\nfailover = [\"eu-west\"]\nconsistency = \"best_effort\"\n",
        "billing",
        "billing.charge",
    )
    .await;
    let _responders = cl.responders_everywhere("billing.charge").await;
    let caller = client(&cl.a).await;
    assert_eq!(
        majority(&caller, "billing.charge", 10).await,
        C,
        "pinned to us-east although ap-south has a responder"
    );
    // us-east unreachable: the failover region.
    cl.cut_c(true);
    assert!(eventually(Duration::from_secs(15), || link_state(&cl.a, C) == "down").await);
    assert_eq!(majority(&caller, "billing.charge", 10).await, B);
    // Every listed region unreachable: this region's own responders.
    cl.ab.cut();
    assert!(eventually(Duration::from_secs(15), || link_state(&cl.a, B) == "down").await);
    assert_eq!(majority(&caller, "billing.charge", 10).await, A);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_changes_reach_other_regions_within_a_second() {
    let cl = Cluster::start(20, 20, 20).await;
    let knows = |gw: &Gateway, region: &str, subject: &str| {
        explain(gw, subject)["federation"]["regions"]
            .as_array()
            .is_some_and(|r| {
                r.iter()
                    .any(|c| c["region"] == region && c["interest"] == true)
            })
    };
    let c = client(&cl.c).await;
    let started = Instant::now();
    let sub = c.subscribe("prices.>").await.unwrap();
    c.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || knows(&cl.a, C, "prices.eur")).await,
        "a subscription in us-east was not known in ap-south within 1 s (20 ms links)"
    );
    let appeared = started.elapsed();
    let started = Instant::now();
    sub.unsubscribe().await.unwrap();
    c.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !knows(&cl.a, C, "prices.eur")).await,
        "an unsubscription in us-east was not known in ap-south within 1 s"
    );
    eprintln!(
        "interest appeared after {appeared:?}, went after {:?}",
        started.elapsed()
    );
}
