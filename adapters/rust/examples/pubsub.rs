//! Publish / subscribe: a wildcard subscriber receives messages published on matching
//! subjects. Run with a gateway listening on NEXUS_URL (default http://127.0.0.1:7422):
//!
//! ```sh
//! cargo run -p nexus-client --example pubsub
//! ```

use std::time::Duration;

use nexus_client::{Client, OutgoingMessage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("NEXUS_URL").unwrap_or_else(|_| "http://127.0.0.1:7422".into());
    let client = Client::builder(&url)
        .name("example-pubsub")
        .connect()
        .await?;
    println!("connected to {url}: {:?}", client.server_info());

    let mut sub = client.subscribe("example.orders.*").await?;
    println!("subscribed to {}", sub.subject());

    for region in ["eu", "us", "ap"] {
        let subject = format!("example.orders.{region}");
        client
            .publish(&subject, format!("order from {region}"))
            .await?;
        println!("published on {subject}");
    }
    client
        .publish_message(
            OutgoingMessage::new("example.orders.eu", "with headers")
                .with_header("priority", "high"),
        )
        .await?;
    let delivered = client.publish_acked("example.orders.us", "acked").await?;
    println!("acked publish reached {delivered} subscription(s)");

    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next_message()).await {
            Ok(Some(m)) => println!(
                "received {} {:?} headers={:?} traceparent={:?}",
                m.subject,
                String::from_utf8_lossy(&m.payload),
                m.headers,
                m.traceparent()
            ),
            Ok(None) => break,
            Err(_) => {
                println!("timed out waiting for messages");
                break;
            }
        }
    }
    client.close().await;
    println!("closed");
    Ok(())
}
