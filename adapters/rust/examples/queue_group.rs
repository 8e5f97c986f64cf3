//! Queue groups: three workers share one subscription group, so each job goes to exactly one
//! of them. NEXUS_URL defaults to http://127.0.0.1:7422.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nexus_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("NEXUS_URL").unwrap_or_else(|_| "http://127.0.0.1:7422".into());
    let client = Client::builder(&url)
        .name("example-queue-group")
        .connect()
        .await?;
    println!("connected to {url}");

    const JOBS: usize = 30;
    let total = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut sub = client.queue_subscribe("example.jobs", "workers").await?;
        let total = total.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = 0;
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_secs(2), sub.next_message()).await
            {
                mine += 1;
                total.fetch_add(1, Ordering::Relaxed);
                println!("worker {w} got {}", String::from_utf8_lossy(&m.payload));
            }
            (w, mine)
        }));
    }

    for i in 0..JOBS {
        client.publish("example.jobs", format!("job {i}")).await?;
    }
    client.flush().await?;
    println!("published {JOBS} jobs");

    for h in workers {
        let (w, n) = h.await?;
        println!("worker {w} handled {n} job(s)");
    }
    println!(
        "{} of {JOBS} jobs handled (each by exactly one worker)",
        total.load(Ordering::Relaxed)
    );
    client.close().await;
    Ok(())
}
