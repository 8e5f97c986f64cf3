//! The `measure_failover` step: how long a subscriber connected through DNS SRV goes without
//! messages when the gateway it is on is killed, round after round.

use super::*;

impl Runner {
    /// Kills the gateway a subscriber (connected through DNS SRV, default settings) is on,
    /// `rounds` times, and measures the gap from the kill to the first message published after
    /// the kill (on the other gateway, every ~2 ms) that reaches the subscriber.
    pub(crate) async fn measure_failover(&mut self, s: &Json) -> Result<(), String> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let rounds = failover_rounds(s);
        let key = s
            .str("key")
            .and_then(|k| self.env.keys.get(k))
            .cloned()
            .unwrap_or_default();
        let subject = s.str("subject").unwrap_or("failover.ticks").to_owned();
        let connect = |url: String| {
            let key = key.clone();
            async move {
                let mut b = Client::builder(&url).transport(transport());
                if !key.is_empty() {
                    b = b.api_key(key);
                }
                b.connect().await.map_err(|e| format!("{url}: {e}"))
            }
        };
        let sub_client = connect(self.env.srv_url(None)).await?;
        self.clients
            .insert("failover-subscriber".into(), sub_client.clone());
        let mut sub = sub_client
            .subscribe(&subject)
            .await
            .map_err(|e| e.to_string())?;
        sub_client.flush().await.map_err(|e| e.to_string())?;
        let mut gaps = Vec::new();
        for round in 0..rounds {
            let info = sub_client
                .server_info()
                .ok_or(format!("round {round}: the subscriber is not connected"))?;
            let on = (0..self.env.gateways.len())
                .find(|i| format!("conformance-gw-{i}") == info.gateway_id)
                .ok_or(format!("no gateway {} here", info.gateway_id))?;
            let other = (on + 1) % self.env.gateways.len();
            let publisher = connect(self.env.gateways[other].url())
                .await
                .map_err(|e| format!("round {round}: the publisher cannot connect: {e}"))?;
            let started = Arc::new(AtomicU64::new(0)); // the last tick whose publish began
            let stop = Arc::new(AtomicBool::new(false));
            let ticker = tokio::spawn({
                let (started, stop, publisher, subject) = (
                    started.clone(),
                    stop.clone(),
                    publisher.clone(),
                    subject.clone(),
                );
                async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        started.store(i, Ordering::Release);
                        let _ = publisher.publish(&subject, format!("{round}-{i}")).await;
                        let _ = publisher.flush().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            });
            let result = async {
                // Ticks of this round flow through the cluster hop before the kill.
                tick_after(&mut sub, round, 0, 15_000)
                    .await
                    .map_err(|e| format!("round {round}: before the kill: {e}"))?;
                self.env.gateways[on].proc = None;
                let killed = Instant::now();
                // The first tick published after the kill proves the new session (an older
                // one may have been in flight or in the client's buffer).
                let last_before = started.load(Ordering::Acquire);
                tick_after(&mut sub, round, last_before, 10_000)
                    .await
                    .map_err(|e| format!("round {round}: after the kill: {e}"))?;
                Ok::<_, String>(killed.elapsed())
            }
            .await;
            stop.store(true, Ordering::Relaxed);
            let _ = ticker.await;
            publisher.close().await;
            gaps.push(result?);
            let gw = &mut self.env.gateways[on];
            tokio::task::block_in_place(|| gw.start())?;
        }
        report_failover("rust", gaps, s)
    }
}

/// The step's `rounds`, or `$NEXUS_FAILOVER_ROUNDS` (the by-hand measurement).
pub(crate) fn failover_rounds(s: &Json) -> u64 {
    std::env::var("NEXUS_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| s.num("rounds").unwrap_or(3))
}

/// Reads `sub` until a tick `<round>-<i>` with i > `after` arrives.
pub(crate) async fn tick_after(
    sub: &mut Subscription,
    round: u64,
    after: u64,
    ms: u64,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let m = tokio::time::timeout_at(deadline, sub.next_message())
            .await
            .map_err(|_| format!("no tick within {ms} ms"))?
            .ok_or("the subscription ended")?;
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let (r, i) = text.split_once('-').unwrap_or_default();
        if r.parse() == Ok(round) && i.parse().is_ok_and(|i: u64| i > after) {
            return Ok(());
        }
    }
}

/// Prints the gaps' p50/p99 (as tests/cluster.rs does) and fails when one is too long.
pub(crate) fn report_failover(lang: &str, mut gaps: Vec<Duration>, s: &Json) -> Result<(), String> {
    gaps.sort();
    let at = |q: f64| gaps[((gaps.len() as f64 * q).ceil() as usize).clamp(1, gaps.len()) - 1];
    let ms = |d: Duration| d.as_millis();
    let max = gaps[gaps.len() - 1];
    let all: Vec<String> = gaps.iter().map(|g| ms(*g).to_string()).collect();
    println!(
        "  FAILOVER {lang} kills={} p50={}ms p99={}ms max={}ms all=[{}]",
        gaps.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(max),
        all.join(", ")
    );
    let bound = Duration::from_millis(s.num("max_gap_ms").unwrap_or(3000));
    if max > bound {
        return Err(format!(
            "a gap of {} ms is longer than {} ms",
            ms(max),
            bound.as_millis()
        ));
    }
    Ok(())
}
