//! Request / reply: a service doubles numbers; the client sends requests, including one the
//! service refuses and one nobody serves. NEXUS_URL defaults to http://127.0.0.1:7422.

use std::time::Duration;

use nexus_client::{Bytes, Client, Error, Headers, ServiceError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("NEXUS_URL").unwrap_or_else(|_| "http://127.0.0.1:7422".into());
    let client = Client::builder(&url)
        .name("example-request-reply")
        .connect()
        .await?;
    println!("connected to {url}");

    let service = client
        .serve("example.math.double", None, |m| async move {
            let n: i64 = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ServiceError::new("payload is not a number"))?;
            println!("  service: doubling {n}");
            Ok(Bytes::from((n * 2).to_string()))
        })
        .await?;
    println!("serving example.math.double");

    let reply = client.request("example.math.double", "21").await?;
    println!("21 * 2 = {}", String::from_utf8_lossy(&reply.payload));

    let reply = client
        .request_with(
            "example.math.double",
            Headers::new().with("caller", "example"),
            Bytes::from_static(b"50"),
            Duration::from_secs(1),
        )
        .await?;
    println!("50 * 2 = {}", String::from_utf8_lossy(&reply.payload));

    match client.request("example.math.double", "abc").await {
        Err(Error::Service { message }) => println!("refused as expected: {message}"),
        other => println!("unexpected: {other:?}"),
    }
    match client.request("example.math.nobody", "1").await {
        Err(e @ Error::NoResponders { .. }) => println!("as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }

    service.stop().await;
    client.close().await;
    println!("done");
    Ok(())
}
