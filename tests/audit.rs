//! The audit trail as operators use it: `nexus control-plane` processes on the embedded store
//! and on a real etcd, changed by `nexusctl` under two different admin keys and read back
//! with `nexusctl audit` (filters, `-o json`, errors), across a restart and a retention bound.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{ControlPlane, Etcd, nexusctl, nexusctl_as, tempdir};
use serde_json::Value;

/// `nexusctl` as `key`; (exit code, stdout, stderr).
fn run(cp: &ControlPlane, key: &str, args: &[&str]) -> (i32, String, String) {
    let out = nexusctl_as(cp, Some(key), args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok_as(cp: &ControlPlane, key: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(cp, key, args);
    assert_eq!(code, 0, "nexusctl {args:?}: {stderr}");
    stdout
}

#[track_caller]
fn fails_as(cp: &ControlPlane, key: &str, args: &[&str], needle: &str) {
    let (code, _, stderr) = run(cp, key, args);
    assert_eq!(code, 1, "nexusctl {args:?} should fail: {stderr}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
}

/// The trail as `nexusctl audit -o json <filters>` prints it.
fn audit(cp: &ControlPlane, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "-o", "json"];
    args.extend_from_slice(filters);
    let out = nexusctl(cp, &args);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{out:?} is not JSON: {e}"))
        .as_array()
        .expect("an array of records")
        .clone()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn key_id(token: &str) -> String {
    nexus_proto::keys::parse(token).unwrap().0.to_owned()
}

/// Every record whose action is `action`, oldest first.
fn with_action<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["action"] == action).collect()
}

/// Changes by a second admin key, failures, filters, JSON and table output, a restart, and
/// no secret anywhere; the same story on both stores.
fn trail_story(cp: &mut ControlPlane) {
    let dir = tempdir::Dir::new("audit-files");
    let boss = cp.admin_key.clone();
    let boss_id = key_id(&boss);
    // The bootstrap key itself is on the trail, made by the control plane.
    let first = audit(cp, &[]);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["action"], "keys.bootstrap");
    assert_eq!(first[0]["actor_kind"], "control-plane");
    assert_eq!(first[0]["target_name"], boss_id.as_str());

    // A second admin key, "ops", makes the changes below.
    let created: Value = serde_json::from_str(&nexusctl(
        cp,
        &["keys", "create", "ops", "--admin", "-o", "json"],
    ))
    .unwrap();
    let ops = created["secret"].as_str().unwrap().to_owned();
    let ops_id = created["id"].as_str().unwrap().to_owned();
    // The new key reaches the control plane's auth snapshot within moments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while run(cp, &ops, &["regions", "list"]).0 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "ops key never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    ok_as(cp, &ops, &["regions", "create", "us-east"]);
    let route = write(
        &dir.0,
        "orders.toml",
        "name = \"orders\"\nsubjects = [\"orders.>\"]\nconsistency = \"async\"\n",
    );
    ok_as(cp, &ops, &["routes", "apply", "-f", &route]);
    let route_v2 = write(
        &dir.0,
        "orders2.toml",
        "name = \"orders\"\nsubjects = [\"orders.>\"]\nconsistency = \"best_effort\"\nfailover = [\"us-east\"]\n",
    );
    ok_as(cp, &ops, &["routes", "apply", "-f", &route_v2]);
    let billing: Value = serde_json::from_str(&ok_as(
        cp,
        &ops,
        &[
            "keys",
            "create",
            "billing",
            "--publish",
            "billing.>",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let billing_id = billing["id"].as_str().unwrap().to_owned();
    let rotated: Value = serde_json::from_str(&ok_as(
        cp,
        &ops,
        &["keys", "rotate", &billing_id, "-o", "json"],
    ))
    .unwrap();
    ok_as(
        cp,
        &ops,
        &["keys", "scopes", &billing_id, "--publish", "billing.eu.>"],
    );
    ok_as(
        cp,
        &ops,
        &["keys", "limits", &billing_id, "--msgs-per-sec", "100"],
    );
    ok_as(cp, &ops, &["keys", "revoke", &billing_id]);
    let schema = write(
        &dir.0,
        "order.json",
        r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#,
    );
    ok_as(
        cp,
        &ops,
        &["schemas", "register", "orders.created", "-f", &schema],
    );
    ok_as(
        cp,
        &ops,
        &["schemas", "set-enforcement", "orders.created", "reject"],
    );
    let before_failures = audit(cp, &["--limit", "1000"]);

    // Changes that fail leave no record.
    fails_as(
        cp,
        &ops,
        &["routes", "apply", "-f", &route, "--expect-version", "7"],
        "expected version 7",
    );
    let bad_region = write(
        &dir.0,
        "bad.toml",
        "name = \"bad\"\nsubjects = [\"bad.>\"]\nconsistency = \"async\"\nfailover = [\"mars\"]\n",
    );
    fails_as(
        cp,
        &ops,
        &["routes", "apply", "-f", &bad_region],
        "unknown region",
    );
    fails_as(cp, &ops, &["keys", "rotate", &billing_id], "revoked");
    fails_as(cp, &ops, &["routes", "delete", "nothing-here"], "not found");
    let after_failures = audit(cp, &["--limit", "1000"]);
    assert_eq!(before_failures, after_failures);

    // Who, what, versions, from where.
    let all = after_failures;
    let seqs: Vec<u64> = all
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    for r in &all[2..] {
        assert_eq!(r["actor"], ops_id.as_str(), "{r}");
        assert_eq!(r["actor_kind"], "key");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    assert_eq!(all[1]["action"], "keys.create");
    assert_eq!(all[1]["actor"], boss_id.as_str());
    let applies = with_action(&all, "routes.apply");
    assert_eq!(applies.len(), 2);
    assert_eq!(
        (
            applies[0]["before_version"].as_i64(),
            applies[0]["after_version"].as_i64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(
        (
            applies[1]["before_version"].as_i64(),
            applies[1]["after_version"].as_i64()
        ),
        (Some(1), Some(2))
    );
    let change = applies[1]["summary"].as_str().unwrap();
    assert!(
        change.contains("consistency async -> best_effort")
            && change.contains("failover [] -> [us-east]"),
        "{change}"
    );
    assert_eq!(applies[1]["target_kind"], "route");
    assert_eq!(applies[1]["target_name"], "orders");
    let key_changes: Vec<(String, i64, i64)> = all
        .iter()
        .filter(|r| r["target_name"] == billing_id.as_str())
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["before_version"].as_i64().unwrap(),
                r["after_version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        key_changes,
        [
            ("keys.create".to_owned(), 0, 1),
            ("keys.rotate".to_owned(), 1, 2),
            ("keys.update_scopes".to_owned(), 2, 3),
            ("keys.set_limits".to_owned(), 3, 4),
            ("keys.revoke".to_owned(), 4, 5),
        ]
    );
    let summaries: BTreeMap<&str, &str> = all
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["summary"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(summaries["keys.rotate"].starts_with("secret rotated"));
    assert!(summaries["keys.revoke"].contains("revoked"));
    assert!(summaries["schemas.register"].contains("registered version 1"));
    assert!(summaries["schemas.set_config"].contains("enforcement unset -> reject"));
    assert_eq!(summaries["regions.create"], "created");
    // The record's revision is the change's config version, and revisions only grow.
    let revisions: Vec<i64> = all
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");

    // No secret, and no secret's hash, in any record, in either output.
    let table = nexusctl(cp, &["audit", "--limit", "1000"]);
    let json_text = serde_json::to_string(&all).unwrap();
    for token in [
        boss.as_str(),
        ops.as_str(),
        billing["secret"].as_str().unwrap(),
        rotated["secret"].as_str().unwrap(),
    ] {
        let (_, secret) = nexus_proto::keys::parse(token).unwrap();
        let hash: String = nexus_proto::keys::hash_secret(secret)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for text in [&json_text, &table] {
            assert!(!text.contains(secret), "a secret is on the trail");
            assert!(!text.contains(&hash), "a secret's hash is on the trail");
        }
    }

    // Filters.
    let by_boss = audit(cp, &["--actor", &boss_id]);
    assert_eq!(by_boss.len(), 1);
    assert_eq!(by_boss[0]["target_name"], ops_id.as_str());
    let orders = audit(cp, &["--kind", "route", "--name", "orders"]);
    assert_eq!(orders.len(), 2);
    let revokes = audit(cp, &["--action", "keys.revoke"]);
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["target_name"], billing_id.as_str());
    let latest: Vec<u64> = audit(cp, &["--limit", "2"])
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    let n = all.len() as u64;
    assert_eq!(latest, [n - 1, n]);
    let from: Vec<u64> = audit(cp, &["--since-seq", "3", "--limit", "2"])
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(from, [3, 4]);
    assert_eq!(audit(cp, &["--since", "1h"]).len(), all.len());
    assert!(audit(cp, &["--actor", "nobody"]).is_empty());
    let (_, stdout, stderr) = run(cp, &boss, &["audit", "--limit", "2"]);
    assert!(stderr.contains("more records match"), "{stderr}");
    assert!(
        stdout.starts_with("SEQ") && stdout.contains("schemas.set_config"),
        "{stdout}"
    );
    assert!(
        table.contains(&ops_id) && table.contains("route orders"),
        "{table}"
    );

    // Clear errors with the usual exit codes: 2 for usage, 1 for a refused call.
    let (code, _, stderr) = run(cp, &boss, &["audit", "--limit", "0"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = run(cp, &boss, &["audit", "--kind", "planet"]);
    assert_eq!(code, 2, "{stderr}");
    let out = nexusctl_as(cp, None, &["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an admin key"));

    // Records survive a restart, and the sequence carries on.
    cp.restart();
    assert_eq!(audit(cp, &["--limit", "1000"]), all);
    ok_as(cp, &ops, &["routes", "delete", "orders"]);
    let last = audit(cp, &["--limit", "1"]);
    assert_eq!(last[0]["sequence"].as_u64(), Some(n + 1));
    assert_eq!(last[0]["action"], "routes.delete");
    assert_eq!(
        (
            last[0]["before_version"].as_i64(),
            last[0]["after_version"].as_i64()
        ),
        (Some(2), Some(0))
    );
}

#[test]
fn embedded_store_keeps_an_audit_trail_of_every_admin_change() {
    let data = tempdir::Dir::new("audit-embedded");
    let mut cp = ControlPlane::embedded(&data.0);
    trail_story(&mut cp);
}

#[test]
fn etcd_store_keeps_an_audit_trail_of_every_admin_change() {
    let etcd = Etcd::start();
    let mut cp = ControlPlane::etcd(&etcd.endpoint);
    trail_story(&mut cp);
}

/// The count bound holds at every append, and a lower bound given at a restart prunes the
/// oldest records at once; the sequence never restarts.
#[test]
fn retention_keeps_the_newest_records() {
    let data = tempdir::Dir::new("audit-retention");
    let mut cp = ControlPlane::embedded_with(&data.0, &["--audit-max-records", "5"]);
    for i in 0..8 {
        nexusctl(&cp, &["regions", "create", &format!("r{i}")]);
    }
    let seqs = |cp: &ControlPlane| -> Vec<u64> {
        audit(cp, &["--limit", "1000"])
            .iter()
            .map(|r| r["sequence"].as_u64().unwrap())
            .collect()
    };
    // 1 bootstrap record + 8 regions = 9; the newest 5 are kept.
    assert_eq!(seqs(&cp), [5, 6, 7, 8, 9]);
    cp.set_flag("--audit-max-records", "2");
    cp.restart();
    assert_eq!(seqs(&cp), [8, 9]);
    nexusctl(&cp, &["regions", "create", "r-last"]);
    assert_eq!(seqs(&cp), [9, 10]);
    // A trail without any bound is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["control-plane", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.0.join("other"))
        .args(["--audit-max-records", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--audit-max-age"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
