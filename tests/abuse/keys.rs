//! API keys under abuse: scopes narrowed and secrets retired while sessions are open, rate
//! limits per key on one gateway and across the gateways of a region.

use super::*;

/// Narrowing a key's scopes removes, within 2 s, the subscriptions of open sessions that the
/// new scopes no longer cover (each with an `Error{DENIED, ref_id: sid}`), and keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_keys_scopes_drops_its_subscriptions_within_2s() {
    let (cp, gw, publisher, _dir) = keyed_gateway("").await;
    let (id, secret) = create_key(&cp, "narrowed", &["orders.>"], &["orders.>", "billing.>"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match keyed_session(&gw.url(), &secret).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("key never accepted: {e}"),
        }
    };
    s.send(vec![sub_frame(1, "orders.>"), sub_frame(2, "billing.>")])
        .await;
    for ack in [1, 2] {
        assert!(matches!(s.next_frame().await, Some(Kind::Ack(a)) if a.ack_id == ack));
    }
    let changed = Instant::now();
    let out = nexusctl(
        &cp,
        &[
            "keys",
            "scopes",
            &id,
            "--publish",
            "orders.>",
            "--subscribe",
            "orders.>",
        ],
    );
    assert!(out.contains("subscribe [orders.>]"), "{out}");
    let e = match s.next_result().await {
        Ok(Some(Kind::Error(e))) => e,
        other => panic!("expected the subscription's removal, got {other:?}"),
    };
    let took = changed.elapsed();
    println!(
        "scopes narrowed; subscription dropped after {took:?}: {}",
        e.message
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(e.code, ErrorCode::Denied as i32);
    assert_eq!(e.ref_id, 2);
    assert!(
        e.message.contains("billing.>") && e.message.contains(&id),
        "{}",
        e.message
    );
    // The other subscription still delivers; the dropped one does not.
    let p = keyed_session(&gw.url(), &publisher).await.unwrap();
    for subject in ["billing.x", "orders.x"] {
        p.send(vec![frame(Kind::Pub(v1::Pub {
            subject: subject.into(),
            ..Default::default()
        }))])
        .await;
    }
    match s.next_frame().await {
        Some(Kind::Msg(m)) => assert_eq!((m.sid, m.subject.as_ref()), (1, "orders.x")),
        other => panic!("expected orders.x, got {other:?}"),
    }
}

/// A session opened with a secret that a rotation retired is closed when the overlap ends
/// (within 2 s); a session with the new secret is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_a_retired_secret_close_when_the_overlap_ends() {
    let (cp, gw, _, _dir) = keyed_gateway("").await;
    let (id, old_secret) = create_key(&cp, "rotated", &["a.>"], &["a.>"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut old = loop {
        match keyed_session(&gw.url(), &old_secret).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("key never accepted: {e}"),
        }
    };
    let rotated_at = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&nexusctl(
        &cp,
        &["keys", "rotate", &id, "--overlap", "2s", "-o", "json"],
    ))
    .unwrap();
    let new_secret = v["secret"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut new = loop {
        match keyed_session(&gw.url(), &new_secret).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("new secret never accepted: {e}"),
        }
    };
    // During the overlap the old session works.
    old.send(vec![frame(Kind::Ping(v1::Ping { nonce: 1 }))])
        .await;
    assert!(matches!(old.next_frame().await, Some(Kind::Pong(_))));
    // Then it is told and closed.
    let e = match old.next_result().await {
        Ok(Some(Kind::Error(e))) => e,
        other => panic!("expected DENIED at the overlap's end, got {other:?}"),
    };
    // Not before the overlap ended (it began after `rotated_at`, when the control plane
    // rotated; 100 ms of slack for the clocks of two processes on one machine).
    let closed_after = rotated_at.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900),
        "the old-secret session was closed {closed_after:?} after the rotation, before its 2 s overlap ended"
    );
    let after_overlap = closed_after.saturating_sub(Duration::from_secs(2));
    println!(
        "old-secret session closed {after_overlap:?} after the overlap ended: {}",
        e.message
    );
    assert_eq!(e.code, ErrorCode::Denied as i32);
    assert!(e.message.contains("retired"), "{}", e.message);
    assert!(after_overlap < Duration::from_secs(2), "{after_overlap:?}");
    let status = old.next_result().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // The session with the new secret is unaffected.
    new.send(vec![frame(Kind::Ping(v1::Ping { nonce: 2 }))])
        .await;
    assert!(matches!(new.next_frame().await, Some(Kind::Pong(_))));
}

/// Publishes `n` acked messages as fast as the session takes them; returns (acked, refused
/// for a rate limit, the first refusal's message).
async fn publish_acked(mut s: RawSession, subject: &str, n: u64) -> (u64, u64, String) {
    for chunk in 0..n / 100 {
        s.send(
            (1..=100)
                .map(|i| {
                    frame(Kind::Pub(v1::Pub {
                        subject: subject.to_owned().into(),
                        payload: Bytes::from_static(b"0123456789"),
                        ack_id: chunk * 100 + i,
                        ..Default::default()
                    }))
                })
                .collect(),
        )
        .await;
    }
    let (mut acked, mut limited, mut first) = (0, 0, String::new());
    while acked + limited < n {
        match s.next_frame().await {
            Some(Kind::Ack(_)) => acked += 1,
            Some(Kind::Nack(n)) => {
                let e = n.error.unwrap();
                assert_eq!(e.code, ErrorCode::Limit as i32, "{}", e.message);
                if first.is_empty() {
                    first = e.message;
                }
                limited += 1;
            }
            other => panic!("after {acked} acks, {limited} refusals: {other:?}"),
        }
    }
    (acked, limited, first)
}

/// A key over its rate limit is refused with LIMIT naming the key, counted per key; another
/// key publishing as fast at the same time is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_is_refused_and_other_keys_are_unaffected() {
    let (cp, gw, _, _dir) = keyed_gateway("").await;
    let (limited_id, limited) = create_key(&cp, "limited", &["load.>"], &[]);
    let (_, free) = create_key(&cp, "free", &["load.>"], &[]);
    let version = gw.metric("nexus_config_version", &[]);
    let out = nexusctl(
        &cp,
        &[
            "keys",
            "limits",
            &limited_id,
            "--msgs-per-sec",
            "200",
            "--burst-msgs",
            "100",
        ],
    );
    assert!(out.contains("200 msgs/s (burst 100)"), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_config_version", &[])
            > version)
        .await
    );
    let a = keyed_session_once_accepted(&gw.url(), &limited).await;
    let b = keyed_session_once_accepted(&gw.url(), &free).await;
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        publish_acked(a, "load.a", 5000),
        publish_acked(b, "load.b", 5000)
    );
    let took = started.elapsed();
    println!(
        "in {took:?}: limited key {} acked, {} refused ({}); free key {} acked, {} refused",
        ra.0, ra.1, ra.2, rb.0, rb.1
    );
    assert_eq!(rb, (5000, 0, String::new()), "the other key was affected");
    // At most the burst plus 200/s over the run (with slack for timing).
    let allowed = 100.0 + 200.0 * took.as_secs_f64() + 50.0;
    assert!(
        (ra.0 as f64) <= allowed,
        "{} acked, allowed {allowed}",
        ra.0
    );
    assert!(ra.1 > 0 && ra.2.contains(&limited_id) && ra.2.contains("200 messages/s"));
    assert_eq!(
        gw.metric(
            "nexus_key_rate_limited_total",
            &[&format!("key=\"{limited_id}\"")]
        ),
        ra.1 as f64
    );
}

/// A key's limits hold for its region, divided among the gateways where the key has
/// sessions: with its sessions on one gateway of two, that gateway enforces the whole limit
/// (an even split by live gateways gave it half); with sessions on both, each enforces half,
/// so a key publishing through both at once gets about its limit in all, not twice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_holds_across_the_gateways_of_a_region() {
    let data = tempdir::Dir::new("abuse-region-limit");
    let cp = ControlPlane::embedded(&data.0);
    let pki = data.0.join("pki");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["certs", "--out", pki.to_str().unwrap()])
        .args(["--gateway", "abuse/gw1", "--gateway", "abuse/gw2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let gws: Vec<Gateway> = ["gw1", "gw2"]
        .iter()
        .map(|id| {
            let pem = pki.join("gateways/abuse").join(id);
            Gateway::start_with_args(&[
                "--region",
                "abuse",
                "--gateway-id",
                id,
                "--control-plane",
                &cp.url(),
                "--auth",
                "required",
                "--federation-listen",
                "127.0.0.1:0",
                "--federation-cert",
                &format!("{}.pem", pem.display()),
                "--federation-key",
                &format!("{}-key.pem", pem.display()),
                "--federation-ca",
                pki.join("ca.pem").to_str().unwrap(),
            ])
        })
        .collect();
    // Each gateway knows the other (the control plane pushes the region's registrations).
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(20), || {
                common::regions::status(gw)["cluster"]
                    .as_array()
                    .is_some_and(|c| c.len() == 1)
            })
            .await,
            "the gateways did not find each other: {}",
            common::regions::status(gw)
        );
    }
    let (id, secret) = create_key(&cp, "regional", &["load.>"], &[]);
    let versions: Vec<f64> = gws
        .iter()
        .map(|g| g.metric("nexus_config_version", &[]))
        .collect();
    nexusctl(
        &cp,
        &[
            "keys",
            "limits",
            &id,
            "--msgs-per-sec",
            "200",
            "--burst-msgs",
            "100",
        ],
    );
    for (gw, v) in gws.iter().zip(versions) {
        assert!(
            eventually(Duration::from_secs(5), || gw
                .metric("nexus_config_version", &[])
                > v)
            .await
        );
    }
    let session = |gw: &Gateway| {
        let url = gw.url();
        let secret = secret.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match keyed_session(&url, &secret).await {
                    Ok(s) => break s,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("key never accepted: {e}"),
                }
            }
        }
    };
    let share = format!("key=\"{id}\"");

    // Sessions on gw1 only: gw1 enforces the whole limit, once it knows gw2's keys (until
    // then gw2 counts as having sessions of every key).
    assert!(
        eventually(Duration::from_secs(10), || gws[0]
            .metric("nexus_key_limit_share", &[&share])
            == 0.0)
        .await,
        "gw1 never learnt that the key has no sessions on gw2"
    );
    let s1 = session(&gws[0]).await;
    let started = Instant::now();
    let alone = publish_acked(s1, "load.one", 3000).await;
    let took = started.elapsed().as_secs_f64();
    println!(
        "alone on gw1, in {took:.2} s: {} acked / {} refused: {}",
        alone.0, alone.1, alone.2
    );
    assert_eq!(gws[0].metric("nexus_key_limit_share", &[&share]), 0.0);
    assert!(
        (alone.0 as f64) > 50.0 + 100.0 * took + 25.0,
        "{} acked alone on gw1 in {took:.2} s: no more than half the limit",
        alone.0
    );
    assert!((alone.0 as f64) <= 100.0 + 200.0 * took + 50.0, "{alone:?}");
    assert!(
        alone.2.contains("200 messages/s") && !alone.2.contains("share"),
        "{}",
        alone.2
    );

    // Sessions on both: each learns the other's over the cluster link and enforces half.
    let s1 = session(&gws[0]).await;
    let s2 = session(&gws[1]).await;
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(10), || gw
                .metric("nexus_key_limit_share", &[&share])
                == 2.0)
            .await,
            "a gateway never learnt that the key has sessions on the other"
        );
    }
    let started = Instant::now();
    let (r1, r2) = tokio::join!(
        publish_acked(s1, "load.one", 3000),
        publish_acked(s2, "load.two", 3000)
    );
    let took = started.elapsed();
    let acked = r1.0 + r2.0;
    println!(
        "in {took:?}: {acked} acked in the region (gw1 {} acked / {} refused, gw2 {} / {}): {}",
        r1.0, r1.1, r2.0, r2.1, r1.2
    );
    // The region's burst plus 200/s over the run, with slack for timing; each gateway on its
    // own would have allowed twice that.
    let allowed = 100.0 + 200.0 * took.as_secs_f64() + 50.0;
    assert!(
        (acked as f64) <= allowed,
        "{acked} acked, allowed {allowed}"
    );
    for r in [&r1, &r2] {
        assert!(r.0 > 0 && r.1 > 0, "{r:?}");
        assert!(
            r.2.contains("200 messages/s")
                && r.2.contains(
                    "its share among the 2 gateways of the region where this key has sessions"
                ),
            "{}",
            r.2
        );
    }

    // The sessions are closed: gw1 enforces the whole limit again. Then gw2 is cut off (SIGSTOP)
    // past the cluster grace: gw1 no longer knows its keys and counts it for every key (the
    // even split) until it is back.
    let whole = || async {
        eventually(Duration::from_secs(10), || {
            gws[0].metric("nexus_key_limit_share", &[&share]) == 0.0
        })
        .await
    };
    assert!(
        whole().await,
        "gw1 kept a share after the sessions on gw2 closed"
    );
    gws[1].signal("STOP");
    let split = eventually(Duration::from_secs(10), || {
        gws[0].metric("nexus_key_limit_share", &[&share]) == 2.0
    })
    .await;
    gws[1].signal("CONT");
    assert!(
        split,
        "gw1 did not fall back to the even split with gw2 cut off"
    );
    assert!(
        whole().await,
        "gw1 did not learn gw2's keys again after the cut"
    );
}
