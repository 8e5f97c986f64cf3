//! One conformance suite for both store backends: each case runs against the embedded store
//! (a temporary file) and against a real etcd server started from Debian's `etcd` binary on
//! free loopback ports (the test command installs `etcd-server` when missing).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nexus_control_plane::store::embedded::EmbeddedStore;
use nexus_control_plane::store::etcd::EtcdStore;
use nexus_control_plane::store::{
    Compare, MAX_VALUE_BYTES, Op, Store, StoreError, Txn, WatchEvent, WatchStream,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "nexus-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real etcd process; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    async fn start() -> Self {
        let dir = TempDir::new("etcd");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.0.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd binary (Debian package etcd-server)");
        let etcd = Self {
            child,
            endpoint,
            _dir: dir,
        };
        // Ready when a client can talk to it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event in time")
        .expect("watch open")
        .expect("no watch error")
}

async fn basic_kv(s: Arc<dyn Store>) {
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    let r1 = s.put("/t/a", Bytes::from_static(b"1")).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_ref(), kv.version, kv.mod_revision),
        (&b"1"[..], 1, r1)
    );
    let r2 = s.put("/t/a", Bytes::from_static(b"2")).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().version, 2);
    s.put("/t/b", Bytes::from_static(b"b")).await.unwrap();
    s.put("/u/c", Bytes::from_static(b"c")).await.unwrap();
    let (kvs, rev) = s.list("/t/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, vec!["/t/a", "/t/b"]);
    assert!(rev >= r2);
    assert_eq!(
        s.revision().await.unwrap(),
        rev.max(s.revision().await.unwrap())
    );
    assert!(s.delete("/t/a").await.unwrap());
    assert!(!s.delete("/t/a").await.unwrap());
    assert_eq!(s.get("/t/a").await.unwrap(), None);
}

async fn transactions_are_atomic_compare_and_swap(s: Arc<dyn Store>) {
    let create = || {
        Txn::new()
            .when(Compare::Version("/x/route".into(), 0))
            .then(Op::put("/x/route", "v1"))
            .then(Op::put("/x/index", "1"))
    };
    let first = s.txn(create()).await.unwrap();
    assert!(first.succeeded);
    let second = s.txn(create()).await.unwrap();
    assert!(!second.succeeded, "create-if-absent only once");
    let a = s.get("/x/route").await.unwrap().unwrap();
    let b = s.get("/x/index").await.unwrap().unwrap();
    assert_eq!(
        a.mod_revision, b.mod_revision,
        "one revision for the whole txn"
    );

    // A stale version fails and writes nothing, not even the other keys.
    let stale = Txn::new()
        .when(Compare::Version("/x/route".into(), 7))
        .then(Op::put("/x/route", "v2"))
        .then(Op::put("/x/other", "x"));
    assert!(!s.txn(stale).await.unwrap().succeeded);
    assert_eq!(s.get("/x/other").await.unwrap(), None);
    assert_eq!(&s.get("/x/route").await.unwrap().unwrap().value[..], b"v1");

    // The right version succeeds.
    let ok = Txn::new()
        .when(Compare::Version("/x/route".into(), a.version))
        .then(Op::put("/x/route", "v2"))
        .then(Op::delete("/x/index"));
    assert!(s.txn(ok).await.unwrap().succeeded);
    assert_eq!(&s.get("/x/route").await.unwrap().unwrap().value[..], b"v2");
    assert_eq!(s.get("/x/index").await.unwrap(), None);
}

async fn oversized_values_are_refused_and_nothing_is_written(s: Arc<dyn Store>) {
    let big = Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1]);
    let txn = Txn::new()
        .then(Op::put("/big/small", "ok"))
        .then(Op::put("/big/huge", big));
    match s.txn(txn).await {
        Err(StoreError::ValueTooLarge { key, size, max }) => {
            assert_eq!(
                (key.as_str(), size, max),
                ("/big/huge", MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("/big/small").await.unwrap(), None);
    assert!(matches!(
        s.put("", Bytes::new()).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

async fn watches_see_changes_in_order_and_replay_from_a_revision(s: Arc<dyn Store>) {
    let (_, listed) = s.list("/w/").await.unwrap();
    let mut live = s.watch("/w/", 0).await.unwrap();
    let r1 = s.put("/w/1", Bytes::from_static(b"a")).await.unwrap();
    s.put("/elsewhere", Bytes::from_static(b"no"))
        .await
        .unwrap();
    s.put("/w/2", Bytes::from_static(b"b")).await.unwrap();
    s.delete("/w/1").await.unwrap();
    match next_event(&mut live).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("/w/1", r1)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_event(&mut live).await, WatchEvent::Put(kv) if kv.key == "/w/2"));
    assert!(matches!(next_event(&mut live).await, WatchEvent::Delete { key, .. } if key == "/w/1"));

    // From the revision after a list: every change since, in order.
    let mut replay = s.watch("/w/", listed + 1).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut replay).await);
    }
    assert_eq!(seen[0].key(), "/w/1");
    assert_eq!(seen[1].key(), "/w/2");
    assert!(matches!(&seen[2], WatchEvent::Delete { key, .. } if key == "/w/1"));
    assert!(seen.windows(2).all(|w| w[0].revision() < w[1].revision()));
}

async fn leases_expire_renew_and_revoke(s: Arc<dyn Store>) {
    let ttl = Duration::from_secs(2);
    let lease = s.grant_lease(ttl).await.unwrap();
    let put = Txn::new().then(Op::Put {
        key: "/l/gw".into(),
        value: Bytes::from_static(b"alive"),
        lease: Some(lease),
    });
    assert!(s.txn(put).await.unwrap().succeeded);
    assert_eq!(s.get("/l/gw").await.unwrap().unwrap().lease, lease);
    // Kept alive past its TTL, the key stays.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        s.keep_alive(lease).await.unwrap();
    }
    assert!(s.get("/l/gw").await.unwrap().is_some());
    // Left alone, it expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.get("/l/gw").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = s.keep_alive(lease).await;
    assert!(
        matches!(renewed, Err(StoreError::LeaseNotFound(_))),
        "{renewed:?}"
    );
    // Revocation deletes at once.
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    s.txn(Txn::new().then(Op::Put {
        key: "/l/gw2".into(),
        value: Bytes::new(),
        lease: Some(lease),
    }))
    .await
    .unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("/l/gw2").await.unwrap(), None);
    // A put on an unknown lease is refused.
    let bad = Txn::new().then(Op::Put {
        key: "/l/none".into(),
        value: Bytes::new(),
        lease: Some(424242),
    });
    assert!(matches!(
        s.txn(bad).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_eq!(s.get("/l/none").await.unwrap(), None);
}

async fn pages_of_a_range_in_either_order(s: Arc<dyn Store>) {
    for k in ["/p/a", "/p/b", "/p/c", "/p/d", "/q/x"] {
        s.put(k, Bytes::from_static(b"v")).await.unwrap();
    }
    let keys = |kvs: Vec<nexus_control_plane::store::KeyValue>| {
        kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(s.range_page("/p/", "/p0", 2, false).await.unwrap()),
        ["/p/a", "/p/b"]
    );
    assert_eq!(
        keys(s.range_page("/p/b\0", "/p0", 10, false).await.unwrap()),
        ["/p/c", "/p/d"]
    );
    assert_eq!(
        keys(s.range_page("/p/", "/p0", 3, true).await.unwrap()),
        ["/p/d", "/p/c", "/p/b"]
    );
    assert_eq!(
        keys(s.range_page("/p/", "/p/b", 10, true).await.unwrap()),
        ["/p/a"]
    );
    assert!(
        s.range_page("/r/", "/r0", 10, false)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The audit trail over each backend: a change and its record commit together, a change
/// whose compare fails leaves no record, concurrent changes get gapless sequence numbers
/// and a chain of before/after versions, and the count bound holds at every append.
async fn audited_changes_carry_their_record_in_the_same_transaction(s: Arc<dyn Store>) {
    use nexus_control_plane::audit::{Actor, Audited, Caller, Retention, query};
    use nexus_proto::v1::ListAuditRequest;
    let retention = Retention {
        max_records: 8,
        max_age: None,
    };
    let audited = |who: &str| -> Arc<dyn Store> {
        Arc::new(Audited::new(
            s.clone(),
            Caller {
                actor: Actor::Key(who.into()),
                peer: Some("127.0.0.1:4242".parse().unwrap()),
            },
            "regions.create",
            retention,
        ))
    };
    let region = "/nexus/v1/regions/r1/info";
    let w = audited("k1");
    let created = w
        .txn(
            Txn::new()
                .when(Compare::Version(region.into(), 0))
                .then(Op::put(region, Bytes::from_static(b""))),
        )
        .await
        .unwrap();
    assert!(created.succeeded);
    // The same create again fails its compare: no record.
    let again = w
        .txn(
            Txn::new()
                .when(Compare::Version(region.into(), 0))
                .then(Op::put(region, Bytes::from_static(b""))),
        )
        .await
        .unwrap();
    assert!(!again.succeeded);
    let all = |q: ListAuditRequest| {
        let s = s.clone();
        async move { query::list(&*s, q).await.unwrap() }
    };
    let listed = all(ListAuditRequest::default()).await;
    assert_eq!(listed.records.len(), 1, "{listed:?}");
    let r = &listed.records[0];
    assert_eq!(
        (
            r.sequence,
            r.actor.as_str(),
            r.actor_kind.as_str(),
            r.peer.as_str()
        ),
        (1, "k1", "key", "127.0.0.1:4242")
    );
    assert_eq!(
        (
            r.target_kind.as_str(),
            r.target_name.as_str(),
            r.before_version,
            r.after_version
        ),
        ("region", "r1", 0, 1)
    );
    assert_eq!(r.revision, created.revision);

    // Ten unconditional writers of one key at once: every change lands with its record.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let w = audited(&format!("k{}", i % 2));
            tokio::spawn(async move {
                w.txn(Txn::new().then(Op::put(region, Bytes::from(i.to_string()))))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().succeeded);
    }
    let listed = all(ListAuditRequest {
        since_sequence: 1,
        ..Default::default()
    })
    .await;
    // 11 written, the count bound keeps the newest 8: sequences 4..=11, each change's
    // before version the previous one's after version.
    let seqs: Vec<u64> = listed.records.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, (4..=11).collect::<Vec<_>>());
    assert_eq!((listed.oldest_sequence, listed.latest_sequence), (4, 11));
    for pair in listed.records.windows(2) {
        assert_eq!(pair[0].after_version, pair[1].before_version);
        assert_eq!(pair[1].after_version, pair[1].before_version + 1);
        assert!(pair[0].revision < pair[1].revision);
    }
    assert_eq!(s.get(region).await.unwrap().unwrap().version, 11);

    // Filters and limits.
    let by_k1 = all(ListAuditRequest {
        actor: "k1".into(),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(!by_k1.records.is_empty() && by_k1.records.iter().all(|r| r.actor == "k1"));
    let latest_two = all(ListAuditRequest {
        limit: 2,
        ..Default::default()
    })
    .await;
    let seqs: Vec<u64> = latest_two.records.iter().map(|r| r.sequence).collect();
    assert_eq!((seqs, latest_two.more), (vec![10, 11], true));
    let none = all(ListAuditRequest {
        target_kind: "route".into(),
        ..Default::default()
    })
    .await;
    assert!(none.records.is_empty() && !none.more);

    // A lowered bound is applied by pruning.
    let removed = nexus_control_plane::audit::retention::prune(
        &*s,
        Retention {
            max_records: 3,
            max_age: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(removed, 5);
    let left = all(ListAuditRequest::default()).await;
    assert_eq!((left.oldest_sequence, left.latest_sequence), (9, 11));
    assert_eq!(left.records.len(), 3);

    // The age bound: everything written before now goes; the sequence carries on after it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let removed = nexus_control_plane::audit::retention::prune(
        &*s,
        Retention {
            max_records: 0,
            max_age: Some(Duration::ZERO),
        },
    )
    .await
    .unwrap();
    assert_eq!(removed, 3);
    let empty = all(ListAuditRequest::default()).await;
    assert!(empty.records.is_empty());
    assert_eq!((empty.oldest_sequence, empty.latest_sequence), (0, 0));
    let w = audited("k3");
    assert!(
        w.txn(Txn::new().then(Op::put(region, Bytes::from_static(b"last"))))
            .await
            .unwrap()
            .succeeded
    );
    let last = all(ListAuditRequest::default()).await;
    assert_eq!(last.records[0].sequence, 12);
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = TempDir::new("embedded");
                    let store = EmbeddedStore::open(dir.0.join("state.redb")).await.unwrap();
                    super::$case(Arc::new(store)).await;
                }
            )+
        }
        mod etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let etcd = Etcd::start().await;
                    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await.unwrap();
                    super::$case(Arc::new(store)).await;
                }
            )+
        }
    };
}

conformance!(
    basic_kv,
    transactions_are_atomic_compare_and_swap,
    oversized_values_are_refused_and_nothing_is_written,
    watches_see_changes_in_order_and_replay_from_a_revision,
    leases_expire_renew_and_revoke,
    pages_of_a_range_in_either_order,
    audited_changes_carry_their_record_in_the_same_transaction,
);

#[tokio::test]
async fn embedded_store_survives_a_restart_but_leases_do_not() {
    let dir = TempDir::new("restart");
    let path = dir.0.join("state.redb");
    let rev = {
        let s = EmbeddedStore::open(&path).await.unwrap();
        s.put("/keep", Bytes::from_static(b"me")).await.unwrap();
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        s.txn(Txn::new().then(Op::Put {
            key: "/leased".into(),
            value: Bytes::new(),
            lease: Some(lease),
        }))
        .await
        .unwrap()
        .revision
    };
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(&s.get("/keep").await.unwrap().unwrap().value[..], b"me");
    assert_eq!(s.get("/leased").await.unwrap(), None);
    assert!(
        s.revision().await.unwrap() > rev,
        "revisions keep increasing"
    );
    // Watching from before the restart is answered with Compacted, not silently.
    assert!(matches!(
        s.watch("/", 1).await,
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test]
async fn etcd_unreachable_is_a_clear_error() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err =
        EtcdStore::connect_with_retry(std::slice::from_ref(&endpoint), Duration::from_millis(500))
            .await
            .err()
            .expect("no etcd there");
    let msg = err.to_string();
    assert!(msg.contains(&endpoint), "{msg}");
}
