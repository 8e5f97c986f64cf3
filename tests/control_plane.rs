//! The control plane as operators use it: `nexus control-plane` processes on the embedded
//! store and on a real etcd, driven by `nexusctl`, including every kind of bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ControlPlane, Etcd, tempdir};

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn ctl(cp: &ControlPlane, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args(args)
        .env("NEXUS_CONTROL_PLANE", cp.url())
        .env("NEXUS_ADMIN_KEY", &cp.admin_key)
        .output()
        .expect("run nexusctl");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(cp: &ControlPlane, args: &[&str]) -> String {
    let o = ctl(cp, args);
    assert!(o.ok, "nexusctl {args:?} failed: {}", o.stderr);
    o.stdout
}

#[track_caller]
fn fails(cp: &ControlPlane, args: &[&str], needles: &[&str]) {
    let o = ctl(cp, args);
    assert!(!o.ok, "nexusctl {args:?} should fail; printed {}", o.stdout);
    for n in needles {
        assert!(
            o.stderr.contains(n),
            "nexusctl {args:?}: {:?} should mention {n:?}",
            o.stderr
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const ORDER_V1: &str = r#"{"type":"object","properties":{"id":{"type":"integer"},"price":{"type":"number"}},"required":["id"]}"#;
const ORDER_V2_OK: &str = r#"{"type":"object","properties":{"id":{"type":"integer"},"price":{"type":"number"},"note":{}},"required":["id"]}"#;
const ORDER_V2_BAD: &str = r#"{"type":"object","properties":{"id":{"type":"integer"},"price":{"type":"string"}},"required":["id","price"]}"#;

/// Routes, schemas, keys and regions through nexusctl, then a restart.
fn manage_everything(cp: &mut ControlPlane, restart_keeps_state: bool) {
    let dir = tempdir::Dir::new("cp-files");
    let d = &dir.0;
    ok(cp, &["regions", "create", "us-east"]);
    ok(cp, &["regions", "create", "eu-west"]);
    let regions = ok(cp, &["regions", "list"]);
    assert!(
        regions.contains("us-east") && regions.contains("eu-west"),
        "{regions}"
    );

    // Routes from TOML and JSON files.
    let route = write(
        d,
        "orders.toml",
        "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"weighted\"\nweights = { us-east = 3, eu-west = 1 }\nfailover = [\"eu-west\"]\nconsistency = \"async\"\n",
    );
    assert!(ok(cp, &["routes", "apply", "-f", &route]).contains("version 1"));
    let json_route = write(
        d,
        "audit.json",
        r#"{"name":"audit","subjects":["audit.*"],"policy":"pinned","pinned_region":"eu-west","consistency":"sync","sync_quorum":1}"#,
    );
    ok(cp, &["routes", "apply", "-f", &json_route]);
    // A region a route names cannot be deleted; an unused one can, once.
    fails(
        cp,
        &["regions", "delete", "eu-west"],
        &["route \"audit\" names region \"eu-west\""],
    );
    ok(cp, &["regions", "create", "unused"]);
    assert!(ok(cp, &["regions", "delete", "unused"]).contains("region unused deleted"));
    fails(
        cp,
        &["regions", "delete", "unused"],
        &["region \"unused\" not found"],
    );
    assert!(!ok(cp, &["regions", "list"]).contains("unused"));
    let table = ok(cp, &["routes", "list"]);
    assert!(table.contains("weighted(eu-west=1,us-east=3)"), "{table}");
    assert!(
        table.contains("pinned(eu-west)") && table.contains("sync(1)"),
        "{table}"
    );
    let json = ok(cp, &["routes", "get", "orders", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["consistency"], "async");
    assert_eq!(v[0]["version"], 1);

    // Compare-and-swap: a stale version is refused, nothing changes.
    fails(
        cp,
        &["routes", "apply", "-f", &route, "--expect-version", "5"],
        &["expected version 5, found 1"],
    );
    fails(
        cp,
        &["routes", "apply", "-f", &route, "--expect-version", "-1"],
        &["already exists"],
    );
    ok(
        cp,
        &["routes", "apply", "-f", &route, "--expect-version", "1"],
    );

    // Schemas: register, check a compatible and an incompatible draft, enforcement.
    let v1 = write(d, "order.json", ORDER_V1);
    let v2_ok = write(d, "order-v2.json", ORDER_V2_OK);
    let v2_bad = write(d, "order-bad.json", ORDER_V2_BAD);
    assert!(ok(cp, &["schemas", "register", "orders.created", "-f", &v1]).contains("version 1"));
    assert!(ok(cp, &["schemas", "check", "orders.created", "-f", &v2_ok]).contains("compatible"));
    let o = ctl(cp, &["schemas", "check", "orders.created", "-f", &v2_bad]);
    assert_eq!(
        o.code,
        Some(3),
        "an incompatible draft exits 3: {}",
        o.stderr
    );
    assert!(
        o.stdout.contains("/properties/price"),
        "field-level reasons: {}",
        o.stdout
    );
    fails(
        cp,
        &["schemas", "register", "orders.created", "-f", &v2_bad],
        &["not compatible", "/properties/price"],
    );
    assert!(ok(cp, &["schemas", "register", "orders.created", "-f", &v2_ok]).contains("version 2"));
    ok(
        cp,
        &[
            "schemas",
            "set-compatibility",
            "FULL_TRANSITIVE",
            "--subject",
            "orders.created",
        ],
    );
    ok(
        cp,
        &["schemas", "set-enforcement", "orders.created", "reject"],
    );
    let list = ok(cp, &["schemas", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["subjects"][0]["versions"], serde_json::json!([1, 2]));
    assert_eq!(v["subjects"][0]["compatibility"], "FULL_TRANSITIVE");
    assert_eq!(v["subjects"][0]["enforcement"], "reject");
    assert!(ok(cp, &["schemas", "get", "orders.created", "--version", "1"]).contains("\"price\""));

    // Keys: the secret appears once, never in listings.
    let created = ok(
        cp,
        &[
            "keys",
            "create",
            "billing",
            "--publish",
            "billing.>",
            "--subscribe",
            "billing.replies.*",
            "-o",
            "json",
        ],
    );
    let key: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = key["id"].as_str().unwrap().to_owned();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("nxk_{id}_")));
    let listed = ok(cp, &["keys", "list", "-o", "json"]);
    assert!(
        listed.contains(&id) && !listed.contains(&secret),
        "no secrets in listings"
    );
    let rotated = ok(
        cp,
        &["keys", "rotate", &id, "--overlap", "10m", "-o", "json"],
    );
    let r: serde_json::Value = serde_json::from_str(&rotated).unwrap();
    assert_ne!(r["secret"], key["secret"]);
    assert!(r["previous_valid_until_ms"].as_i64().unwrap() > 0);
    assert!(ok(cp, &["keys", "revoke", &id]).contains("revoked"));
    assert!(ok(cp, &["keys", "list"]).contains("revoked"));
    fails(cp, &["keys", "rotate", &id], &["revoked"]);

    if restart_keeps_state {
        cp.restart();
        assert!(ok(cp, &["routes", "list"]).contains("orders"));
        assert!(ok(cp, &["schemas", "get", "orders.created"]).contains("version  2"));
        assert!(ok(cp, &["keys", "list"]).contains("billing"));
    }

    ok(cp, &["routes", "delete", "audit"]);
    fails(
        cp,
        &["routes", "get", "audit"],
        &["route \"audit\" not found"],
    );
    ok(cp, &["schemas", "delete", "orders.created"]);
    fails(cp, &["schemas", "get", "orders.created"], &["not found"]);
}

#[test]
fn embedded_store_manages_routes_schemas_and_keys_and_survives_a_restart() {
    let data = tempdir::Dir::new("cp-embedded");
    let mut cp = ControlPlane::embedded(&data.0);
    manage_everything(&mut cp, true);
}

#[test]
fn etcd_store_manages_routes_schemas_and_keys() {
    let etcd = Etcd::start();
    let mut cp = ControlPlane::etcd(&etcd.endpoint);
    manage_everything(&mut cp, true);
}

#[test]
fn bad_input_is_refused_with_clear_errors_and_nothing_is_written() {
    let data = tempdir::Dir::new("cp-bad");
    let cp = ControlPlane::embedded(&data.0);
    let files = tempdir::Dir::new("cp-bad-files");
    let d = &files.0;
    ok(&cp, &["regions", "create", "us-east"]);

    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "broken.toml",
            "name = \"x\"\nsubjects = [\"a\"",
            vec!["route file", "broken.toml", "not valid"],
        ),
        (
            "typo.toml",
            "name = \"x\"\nsubjects = [\"a\"]\nconsistency = \"async\"\nfailovr = []\n",
            vec!["unknown field", "failovr"],
        ),
        (
            "region.toml",
            "name = \"x\"\nsubjects = [\"a\"]\nconsistency = \"async\"\nfailover = [\"mars\"]\n",
            vec!["route.failover[0]", "unknown region \"mars\"", "us-east"],
        ),
        (
            "subject.toml",
            "name = \"x\"\nsubjects = [\"a..b\"]\nconsistency = \"async\"\n",
            vec!["route.subjects[0]", "empty token"],
        ),
        (
            "mode.toml",
            "name = \"x\"\nsubjects = [\"a\"]\nconsistency = \"eventually\"\n",
            vec!["unknown consistency", "best_effort"],
        ),
        (
            "noconsistency.toml",
            "name = \"x\"\nsubjects = [\"a\"]\nconsistency = \"\"\n",
            vec!["consistency"],
        ),
        (
            "pinned.toml",
            "name = \"x\"\nsubjects = [\"a\"]\npolicy = \"pinned\"\nconsistency = \"local\"\n",
            vec!["route.pinned_region"],
        ),
        (
            "name.toml",
            "name = \"Bad Name\"\nsubjects = [\"a\"]\nconsistency = \"local\"\n",
            vec!["route.name"],
        ),
    ];
    for (file, text, needles) in cases {
        let p = write(d, file, text);
        fails(&cp, &["routes", "apply", "-f", &p], &needles);
    }
    fails(
        &cp,
        &["routes", "apply", "-f", "/nonexistent/route.toml"],
        &["cannot read route file"],
    );
    assert!(
        ok(&cp, &["routes", "list"]).lines().count() == 1,
        "nothing was written"
    );

    // Schemas.
    let bad_json = write(
        d,
        "bad.json",
        "{\"type\": \"object\",\n  \"properties\": {\n  oops }",
    );
    fails(
        &cp,
        &["schemas", "register", "s.one", "-f", &bad_json],
        &["line 3"],
    );
    let not_schema = write(d, "notschema.json", "{\"type\": 12}");
    fails(
        &cp,
        &["schemas", "register", "s.one", "-f", &not_schema],
        &["invalid definition"],
    );
    let garbage = write(d, "garbage.pb", "this is not a descriptor set");
    fails(
        &cp,
        &[
            "schemas",
            "register",
            "s.one",
            "-f",
            &garbage,
            "--message",
            "a.B",
        ],
        &["invalid definition"],
    );
    fails(
        &cp,
        &["schemas", "register", "s.one", "-f", &garbage],
        &["--message"],
    );
    let unknown_ext = write(d, "schema.txt", "{}");
    fails(
        &cp,
        &["schemas", "register", "s.one", "-f", &unknown_ext],
        &["--format"],
    );
    let big = write(
        d,
        "big.json",
        &format!("{{\"description\": \"{}\"}}", "x".repeat(1_100_000)),
    );
    fails(
        &cp,
        &["schemas", "register", "s.one", "-f", &big],
        &["large"],
    );
    fails(
        &cp,
        &["schemas", "register", "a.*", "-f", &bad_json],
        &["subject"],
    );
    fails(
        &cp,
        &["schemas", "set-compatibility", "SIDEWAYS", "--default"],
        &["unknown compatibility mode", "FULL_TRANSITIVE"],
    );
    fails(
        &cp,
        &["schemas", "set-enforcement", "s.one", "sometimes"],
        &["off, warn or reject"],
    );
    assert!(ok(&cp, &["schemas", "list"]).contains("default compatibility: BACKWARD"));

    // Keys.
    fails(
        &cp,
        &["keys", "create", "nothing"],
        &["at least one publish or subscribe pattern"],
    );
    fails(
        &cp,
        &["keys", "create", "bad", "--publish", "a..b"],
        &["scopes.publish[0]"],
    );
    fails(&cp, &["keys", "revoke", "0123456789abcdef"], &["not found"]);
    fails(&cp, &["keys", "revoke", "../etc"], &["not a key id"]);
    let keys: serde_json::Value =
        serde_json::from_str(&ok(&cp, &["keys", "list", "-o", "json"])).unwrap();
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["bootstrap-admin"],
        "no key was written by the refused calls"
    );
}

#[test]
fn concurrent_edits_are_serialised_by_compare_and_swap() {
    let data = tempdir::Dir::new("cp-cas");
    let cp = ControlPlane::embedded(&data.0);
    let files = tempdir::Dir::new("cp-cas-files");
    let route = write(
        &files.0,
        "r.toml",
        "name = \"r\"\nsubjects = [\"r.>\"]\nconsistency = \"local\"\n",
    );
    ok(&cp, &["routes", "apply", "-f", &route]);
    // Eight writers all expect version 1: exactly one wins.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = cp.url();
            let key = cp.admin_key.clone();
            let route = route.clone();
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_nexusctl"))
                    .args(["routes", "apply", "-f", &route, "--expect-version", "1"])
                    .env("NEXUS_CONTROL_PLANE", url)
                    .env("NEXUS_ADMIN_KEY", key)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "exactly one concurrent edit succeeds");
    for o in results.iter().filter(|o| !o.status.success()) {
        assert!(String::from_utf8_lossy(&o.stderr).contains("changed concurrently"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&ok(&cp, &["routes", "get", "r", "-o", "json"])).unwrap();
    assert_eq!(v[0]["version"], 2);
}

#[test]
fn etcd_unreachable_at_start_is_retried_then_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &endpoint,
            "--etcd-connect-timeout",
            "1s",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(
        stderr.contains("etcd not reachable yet"),
        "retries are logged: {stderr}"
    );
}

#[test]
fn the_admin_api_requires_an_admin_key() {
    let data = tempdir::Dir::new("cp-admin");
    let cp = ControlPlane::embedded(&data.0);
    let run = |key: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nexusctl"));
        c.args(["routes", "list"])
            .env("NEXUS_CONTROL_PLANE", cp.url());
        match key {
            Some(k) => c.env("NEXUS_ADMIN_KEY", k),
            None => c.env_remove("NEXUS_ADMIN_KEY"),
        };
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok_, err) = run(None);
    assert!(!ok_ && err.contains("needs an admin key"), "{err}");
    let (ok_, err) = run(Some(
        "nxk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
    ));
    assert!(!ok_ && err.contains("unknown"), "{err}");
    // A key without the admin scope may not manage anything.
    let out = ok(
        &cp,
        &["keys", "create", "app", "--publish", "app.>", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The new key reaches the control plane's in-memory snapshot within moments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let err = loop {
        let (ok_, err) = run(v["secret"].as_str());
        assert!(!ok_);
        if err.contains("does not have the admin scope") || std::time::Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(err.contains("does not have the admin scope"), "{err}");
    let (ok_, _) = run(Some(&cp.admin_key));
    assert!(ok_);
}

#[test]
fn nexusctl_reports_an_unreachable_control_plane() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args(["routes", "list"])
        .env("NEXUS_CONTROL_PLANE", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control plane"));
}
