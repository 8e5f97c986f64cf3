//! The repository README's Rust hello world ("Rust in five lines"), run as written against a
//! real (in-process) gateway. `readme_hello` holds the README's lines with the gateway's
//! address as `addr`; `the_readme_lines_are_the_ones_tested` fails when the README and this
//! file drift apart.

use std::time::Duration;

/// README.md's five lines, in a function that gives them an address and returns the message.
async fn readme_hello(addr: &str) -> nexus_client::Result<nexus_client::Message> {
    let client = nexus_client::Client::connect(addr).await?;
    let mut sub = client.subscribe("greetings.*").await?;
    client.publish("greetings.world", "hello").await?;
    let msg = sub.next_message().await.unwrap();
    println!("{}: {:?}", msg.subject, msg.payload);
    Ok(msg)
}

/// The first ```rust block of the repository README.
fn readme_block() -> String {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```rust\n")
        .expect("README.md has a rust block")
        + "```rust\n".len();
    let len = readme[start..].find("```").expect("the block ends");
    readme[start..start + len].to_owned()
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
