//! Config push latency: how long from a config change being committed (the Admin call
//! returned) until every live gateway reports it applied that version, which is what
//! `nexusctl` waits for after a change (docs/control-plane.md §7.4).
//!
//! Each round flips the schema enforcement of one subject (`off` <-> `warn`, so no traffic is
//! affected), reads the write's version from the `nexus-config-version` header, then reads the
//! topology every millisecond until every gateway's `config_version` reached it. The figure
//! includes the control plane's watch and 50 ms debounce, the push, the gateway applying and
//! saving the snapshot, its report, and up to one poll interval plus one topology read.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use nexus_proto::v1::admin_client::AdminClient;
use nexus_proto::v1::{Enforcement, GetTopologyRequest, SchemaConfig, SetSchemaConfigRequest};
use tonic::transport::Channel;

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushLatency {
    pub rounds: u64,
    pub gateways: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs `rounds` config changes against the control plane at `url` (its Admin API must be
/// open, as in `nexus dev`, or `admin_key` given).
pub async fn measure(
    url: &str,
    admin_key: Option<&str>,
    rounds: u64,
) -> anyhow::Result<PushLatency> {
    let channel = Channel::from_shared(url.to_owned())
        .context("control plane URL")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))?;
    let bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = admin_key
        .map(|k| format!("Bearer {k}").parse())
        .transpose()
        .context("admin key")?;
    let mut admin = AdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        if let Some(b) = &bearer {
            r.metadata_mut().insert("authorization", b.clone());
        }
        Ok(r)
    });
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut gateways = 0;
    for round in 0..rounds {
        let enforcement = if round % 2 == 0 {
            Enforcement::Warn
        } else {
            Enforcement::Off
        };
        let response = admin
            .set_schema_config(SetSchemaConfigRequest {
                config: Some(SchemaConfig {
                    subject: "bench.config-push".into(),
                    enforcement: enforcement as i32,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("SetSchemaConfig: {}", s.message()))?;
        let committed = Instant::now();
        let version: i64 = response
            .metadata()
            .get("nexus-config-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("the control plane sent no nexus-config-version header")?;
        loop {
            let topology = admin
                .get_topology(GetTopologyRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("GetTopology: {}", s.message()))?
                .into_inner();
            let all: Vec<i64> = topology
                .regions
                .iter()
                .flat_map(|r| r.gateways.iter().map(|g| g.config_version))
                .collect();
            if all.is_empty() {
                bail!("no live gateway is registered with the control plane");
            }
            if all.iter().all(|v| *v >= version) {
                gateways = all.len();
                hist.record(committed.elapsed().as_micros() as u64)?;
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("config version {version} not applied by every gateway within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(PushLatency {
        rounds,
        gateways,
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
    })
}
