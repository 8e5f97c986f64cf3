//! The Rust hello worlds of the READMEs, run as written against a real (in-process) gateway:
//! the repository README's "Rust in five lines" (`readme_hello`) and the first block of
//! adapters/rust/README.md (`adapter_readme_hello`), each with the gateway's address as `addr`.
//! `the_readme_lines_are_the_ones_tested` and `the_adapter_readme_lines_are_the_ones_tested`
//! fail when a README and this file drift apart.

use std::time::Duration;

use nexus_client::{Client, ServiceError};

/// README.md's five lines, in a function that gives them an address and returns the message.
async fn readme_hello(addr: &str) -> nexus_client::Result<nexus_client::Message> {
    let client = nexus_client::Client::connect(addr).await?;
    let mut sub = client.subscribe("greetings.*").await?;
    client.publish("greetings.world", "hello").await?;
    let msg = sub.next_message().await.unwrap();
    println!("{}: {:?}", msg.subject, msg.payload);
    Ok(msg)
}

/// adapters/rust/README.md's first block (its hidden `# ` lines left out), in a function that
/// gives it an address and returns the request's answer. Not formatted by rustfmt: the lines are
/// the README's, as written.
#[rustfmt::skip]
async fn adapter_readme_hello(addr: &str) -> nexus_client::Result<nexus_client::Message> {
    let client = Client::connect(addr).await?;   // "127.0.0.1:7422" works too
    let mut sub = client.subscribe("orders.*.created").await?;
    client.publish("orders.eu.created", "order #1").await?;
    let msg = sub.next_message().await.unwrap();
    assert_eq!(&*msg.subject, "orders.eu.created");

    let _svc = client.serve("math.double", Some("workers"), |m| async move {
        let n: u64 = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok())
            .ok_or_else(|| ServiceError::new("not a number"))?;
        Ok((n * 2).to_string().into())
    }).await?;
    let reply = client.request("math.double", "21").await?;
    Ok(reply)
}

/// The first ```rust block of the repository README.
fn readme_block() -> String {
    first_block(include_str!("../../../README.md"), "```rust\n")
}

/// The first block of `readme` opened by `fence`.
fn first_block(readme: &str, fence: &str) -> String {
    let start = readme.find(fence).expect("the README has the block") + fence.len();
    let len = readme[start..].find("```").expect("the block ends");
    readme[start..start + len].to_owned()
}

#[test]
fn the_adapter_readme_lines_are_the_ones_tested() {
    let here = include_str!("readme.rs");
    let block = first_block(include_str!("../README.md"), "```rust,no_run\n");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.starts_with("# ") && !l.starts_with("use ") && !l.is_empty())
        .collect();
    assert!(lines.len() >= 8, "the block: {block}");
    for line in lines {
        let line = line.replace("\"http://127.0.0.1:7422\"", "addr");
        assert!(
            here.contains(&format!("    {line}\n")),
            "adapters/rust/README.md line not in adapter_readme_hello: {line}"
        );
    }
}

#[tokio::test]
async fn adapter_readme_hello_world_runs() {
    let config: nexus_gateway::GatewayConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\n",
    )
    .expect("gateway config");
    let gateway = nexus_gateway::start(config).await.expect("gateway");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        adapter_readme_hello(&format!("http://{}", gateway.grpc_addr)),
    )
    .await
    .expect("in time")
    .expect("the hello world");
    assert_eq!(&reply.payload[..], b"42");
}

#[test]
fn the_readme_lines_are_the_ones_tested() {
    let here = include_str!("readme.rs");
    for line in readme_block().lines() {
        let line = line.replace("\"http://127.0.0.1:7422\"", "addr");
        assert!(
            here.contains(&format!("    {line}\n")),
            "README.md line not in readme_hello: {line}"
        );
    }
}

#[tokio::test]
async fn readme_hello_world_runs() {
    let config: nexus_gateway::GatewayConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\n",
    )
    .expect("gateway config");
    let gateway = nexus_gateway::start(config).await.expect("gateway");
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        readme_hello(&format!("http://{}", gateway.grpc_addr)),
    )
    .await
    .expect("in time")
    .expect("the hello world");
    assert_eq!(&*msg.subject, "greetings.world");
    assert_eq!(&msg.payload[..], b"hello");
}
