//! Bidirectional stream with credit-based flow control: an acceptor upper-cases every frame
//! it receives; the opener sends from one task and reads the echoes from another.
//! NEXUS_URL defaults to http://127.0.0.1:7422.

use std::time::Duration;

use nexus_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("NEXUS_URL").unwrap_or_else(|_| "http://127.0.0.1:7422".into());
    // A small window to show backpressure: the sender waits for credit.
    let client = Client::builder(&url)
        .name("example-stream")
        .stream_window(16)
        .connect()
        .await?;
    println!("connected to {url}");

    let mut listener = client.listen_streams("example.upper", None).await?;
    let acceptor = tokio::spawn(async move {
        let Some(mut stream) = listener.accept().await else {
            return;
        };
        println!("acceptor: stream {} on {}", stream.id(), stream.subject());
        let mut n = 0;
        while let Some(frame) = stream.recv().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    println!("acceptor: stream aborted: {e}");
                    return;
                }
            };
            let upper = String::from_utf8_lossy(&frame.payload).to_uppercase();
            if stream.send(upper).await.is_err() {
                return;
            }
            n += 1;
        }
        println!("acceptor: opener finished after {n} frames; finishing too");
        let _ = stream.finish().await;
    });

    let stream = client.open_stream("example.upper").await?;
    println!("opened stream {}", stream.id());
    let (mut tx, mut rx) = stream.split();
    let sender = tokio::spawn(async move {
        for i in 0..100 {
            tx.send(format!("frame {i}")).await?;
        }
        tx.finish().await?;
        println!("opener: sent 100 frames and finished");
        Ok::<_, nexus_client::Error>(())
    });
    let mut received: u32 = 0;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        let frame = frame?;
        received += 1;
        if received.is_multiple_of(25) {
            println!("opener: got {:?}", String::from_utf8_lossy(&frame.payload));
        }
    }
    sender.await??;
    acceptor.await?;
    println!("opener: received {received} frames");
    client.close().await;
    Ok(())
}
