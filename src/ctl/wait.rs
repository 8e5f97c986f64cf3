//! Read-your-writes for operators: after a command that changed pushed configuration, wait
//! until every live gateway reports (through the control plane's topology) that it applied the
//! config version of that write, or fail after a timeout naming the gateways that have not.
//!
//! The control plane answers each config write with its store revision (the
//! `nexus-config-version` header); a gateway's registration carries the version of the last
//! snapshot it applied, updated as soon as it applied one (docs/control-plane.md §7). A
//! snapshot's version is the revision it was read at, so "applied >= the write's revision"
//! means the gateway routes with the change.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use nexus_proto::v1::GetTopologyRequest;

use super::Output;
use super::admin::Admin;

/// The highest config version a write of this process produced (0: none). nexusctl runs one
/// command per process, so a process-wide value is the command's.
static WRITTEN: AtomicI64 = AtomicI64::new(0);

/// How often the topology is read while waiting.
const POLL: Duration = Duration::from_millis(20);

pub fn note_config_version(version: i64) {
    WRITTEN.fetch_max(version, Ordering::Relaxed);
}

/// The config version this command's writes produced, if any.
pub fn written_config_version() -> Option<i64> {
    Some(WRITTEN.load(Ordering::Relaxed)).filter(|v| *v > 0)
}

/// A gateway that has not applied the version yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub id: String,
    pub region: String,
    pub applied: i64,
}

/// The gateways (id, region, applied version) that have not applied `version`.
pub fn behind(version: i64, gateways: &[(String, String, i64)]) -> Vec<Behind> {
    gateways
        .iter()
        .filter(|(_, _, applied)| *applied < version)
        .map(|(id, region, applied)| Behind {
            id: id.clone(),
            region: region.clone(),
            applied: *applied,
        })
        .collect()
}

/// The timeout error: which gateways, where they are.
pub fn timeout_message(version: i64, timeout: Duration, live: usize, behind: &[Behind]) -> String {
    let list: Vec<String> = behind
        .iter()
        .map(|b| format!("{} ({}, at version {})", b.id, b.region, b.applied))
        .collect();
    format!(
        "the change (config version {version}) is stored, but {} of {live} live gateway(s) had not applied it after {timeout:?}: {} (rerun with a longer --wait-timeout, or check those gateways' logs and `nexusctl topology`)",
        behind.len(),
        list.join(", ")
    )
}

/// Waits until every live gateway applied `version`; in text output, prints how many applied
/// it and how long it took (JSON output stays the command's one document).
pub async fn applied(
    admin: &mut Admin,
    version: i64,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let topology = admin
            .get_topology(GetTopologyRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let gateways: Vec<(String, String, i64)> = topology
            .regions
            .iter()
            .flat_map(|r| r.gateways.iter())
            .map(|g| (g.id.clone(), g.region.clone(), g.config_version))
            .collect();
        let pending = behind(version, &gateways);
        if pending.is_empty() {
            let waited = started.elapsed();
            match output {
                Output::Text => println!(
                    "applied by {} live gateway(s) in {} ms (config version {version})",
                    gateways.len(),
                    waited.as_millis()
                ),
                // One JSON document per result: scripts parse the command's own; success
                // here is the exit status, a timeout is an error on stderr.
                Output::Json => {}
            }
            return Ok(());
        }
        if started.elapsed() >= timeout {
            anyhow::bail!(timeout_message(version, timeout, gateways.len(), &pending));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gateways_below_the_version_are_behind() {
        let gws = vec![
            ("gw-a".to_owned(), "us-east".to_owned(), 12),
            ("gw-b".to_owned(), "eu-west".to_owned(), 9),
            ("gw-c".to_owned(), "ap-south".to_owned(), 10),
        ];
        let b = behind(10, &gws);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].id, "gw-b");
        assert_eq!(
            timeout_message(10, Duration::from_secs(10), 3, &b),
            "the change (config version 10) is stored, but 1 of 3 live gateway(s) had not applied it after 10s: gw-b (eu-west, at version 9) (rerun with a longer --wait-timeout, or check those gateways' logs and `nexusctl topology`)"
        );
        assert!(behind(9, &gws).is_empty());
    }
}
