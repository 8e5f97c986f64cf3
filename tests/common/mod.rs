//! Test harness: real `nexus gateway` processes on loopback ports, plus a raw protocol
//! session for tests that need to misbehave in ways a well-written adapter never would.
#![allow(dead_code)]

pub mod regions;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nexus_proto::v1::{self, Batch, Frame, frame::Kind, gateway_client::GatewayClient};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// A gateway child process. Killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    config: Option<PathBuf>,
    /// Extra arguments, kept for `restart`.
    extra: Vec<String>,
    /// Federation (QUIC) address, when started with `--federation-listen`.
    pub federation: Option<SocketAddr>,
    _dir: Option<tempdir::Dir>,
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "nexus-test-{tag}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&p).expect("create temp dir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}

impl Gateway {
    /// Starts `nexus gateway` on free loopback ports with default settings.
    pub fn start() -> Self {
        Self::spawn(
            None,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
    }

    /// Starts a gateway with extra TOML configuration.
    pub fn start_with_config(toml: &str) -> Self {
        let dir = tempdir::Dir::new("gw");
        let path = dir.0.join("gateway.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut g = Self::spawn(
            Some(path),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        );
        g._dir = Some(dir);
        g
    }

    /// Starts a gateway with extra command-line arguments (e.g. `--control-plane`).
    pub fn start_with_args(args: &[&str]) -> Self {
        // Each gateway gets its own state directory (config snapshot, replication spool),
        // kept across `restart`, unless the test names one.
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = if args.iter().any(|a| a == "--state-dir") {
            None
        } else {
            let d = tempdir::Dir::new("gw-state");
            args.push("--state-dir".into());
            args.push(d.0.display().to_string());
            Some(d)
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut g = Self::spawn_full(
            None,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            &[],
            &refs,
        );
        g.extra = args;
        g._dir = dir;
        g
    }

    /// Starts a gateway with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::spawn_with(
            None,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            env,
        )
    }

    fn spawn(config: Option<PathBuf>, grpc: SocketAddr, metrics: SocketAddr) -> Self {
        Self::spawn_with(config, grpc, metrics, &[])
    }

    fn spawn_with(
        config: Option<PathBuf>,
        grpc: SocketAddr,
        metrics: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_full(config, grpc, metrics, env, &[])
    }

    fn spawn_full(
        config: Option<PathBuf>,
        grpc: SocketAddr,
        metrics: SocketAddr,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexus"));
        cmd.arg("gateway");
        if !extra.contains(&"--region") {
            cmd.arg("--region").arg("test");
        }
        cmd.arg("--listen")
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            // NEXUS_TEST_GATEWAY_LOG raises the gateways' log level when debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("NEXUS_TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("NEXUS_CONTROL_PLANE")
            .env_remove("NEXUS_AUTH")
            .env_remove("NEXUS_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Open unless a test asks for keys (the binary's default is `required`).
        if !env.iter().any(|(k, _)| *k == "NEXUS_AUTH") && !extra.contains(&"--auth") {
            cmd.arg("--auth").arg("off");
        }
        let mut child = cmd.spawn().expect("spawn nexus gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        // The gateway prints its bound addresses once both listeners are up.
        let mut federation = None;
        let (grpc, metrics) = loop {
            line.clear();
            let n = lines.read_line(&mut line).expect("read gateway stdout");
            assert!(n > 0, "gateway exited before it was ready");
            if line.starts_with("nexus federation") {
                federation = line
                    .split(" on ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.trim().split(" listening on ").nth(1) {
                let mut parts = rest.split(", metrics on ");
                let grpc: SocketAddr = parts.next().unwrap().parse().unwrap();
                let metrics: SocketAddr = parts.next().unwrap().parse().unwrap();
                break (grpc, metrics);
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        let g = Self {
            child: Some(child),
            grpc,
            metrics,
            config,
            extra: Vec::new(),
            federation,
            _dir: None,
        };
        g.wait_ready();
        g
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.metrics, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not become ready");
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, signal: &str) {
        let c = self.child.as_ref().expect("gateway running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(c.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM (graceful shutdown) and returns the child to wait on.
    pub fn terminate(&mut self) -> Child {
        let c = self.child.take().expect("gateway running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c
    }

    /// Starts a new process on the same ports (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            if std::net::TcpListener::bind(self.grpc).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut extra: Vec<String> = self.extra.clone();
        // Come back on the same federation address too.
        if let (Some(addr), Some(i)) = (
            self.federation,
            extra.iter().position(|a| a == "--federation-listen"),
        ) {
            extra[i + 1] = addr.to_string();
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let fresh = Self::spawn_full(self.config.clone(), self.grpc, self.metrics, &[], &extra);
        self.child = fresh.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    /// Resident memory of the gateway process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("gateway running").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The current Prometheus exposition.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").expect("GET /metrics").1
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics_text(), name, labels)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name && labels.iter().all(|lbl| l.contains(lbl))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Minimal HTTP/1.0 GET, enough for /metrics and /readyz without another dependency.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SRV records of `name` from the DNS server at `dns`, as `dig +short` prints them
/// (`priority weight port target` per line).
pub fn dig_srv(dns: std::net::SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            name,
            "SRV",
            "+short",
        ])
        .output()
        .expect("dig (Debian package dnsutils; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A session driven frame by frame, bypassing the adapter.
pub struct RawSession {
    pub tx: mpsc::Sender<Batch>,
    pub rx: tonic::Streaming<Batch>,
    buffered: std::collections::VecDeque<Kind>,
}

pub fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

pub fn hello() -> Frame {
    frame(Kind::Hello(v1::Hello {
        client_name: "raw-test".into(),
        language: "test".into(),
        version: "0".into(),
        protocol: 1,
        ..Default::default()
    }))
}

impl RawSession {
    /// Opens a session and sends `first` as the first batch (without waiting for Welcome).
    pub async fn open(url: &str, first: Vec<Frame>) -> Result<Self, tonic::Status> {
        let mut client = GatewayClient::connect(url.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        tx.send(Batch::of(first)).await.unwrap();
        let resp = client.session(ReceiverStream::new(rx)).await?;
        Ok(Self {
            tx,
            rx: resp.into_inner(),
            buffered: Default::default(),
        })
    }

    /// Opens a session with Hello and consumes the Welcome.
    pub async fn connect(url: &str) -> Self {
        let mut s = Self::open(url, vec![hello()]).await.expect("open session");
        match s.next_frame().await {
            Some(Kind::Welcome(_)) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        s
    }

    pub async fn send(&self, frames: Vec<Frame>) {
        self.tx.send(Batch::of(frames)).await.expect("session open");
    }

    /// Next frame, or `None` when the stream ended or failed. Waits at most 5 s.
    pub async fn next_frame(&mut self) -> Option<Kind> {
        self.next_result().await.ok().flatten()
    }

    /// Next frame or the status the stream ended with.
    pub async fn next_result(&mut self) -> Result<Option<Kind>, tonic::Status> {
        loop {
            if let Some(k) = self.buffered.pop_front() {
                return Ok(Some(k));
            }
            match tokio::time::timeout(Duration::from_secs(5), self.rx.next()).await {
                Err(_) => return Err(tonic::Status::deadline_exceeded("no frame within 5 s")),
                Ok(None) => return Ok(None),
                Ok(Some(Err(s))) => return Err(s),
                Ok(Some(Ok(batch))) => {
                    self.buffered
                        .extend(batch.frames.into_iter().filter_map(|f| f.kind));
                }
            }
        }
    }
}

/// A real etcd server (Debian's `etcd-server`) on free loopback ports, in a temporary
/// directory; killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempdir::Dir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    pub fn start() -> Self {
        let dir = tempdir::Dir::new("etcd");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.0.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd binary (Debian package etcd-server; scripts/test installs it)");
        let etcd = Self {
            child,
            endpoint,
            _dir: dir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // etcd answers /health over the client port once it has a leader.
        while !matches!(http_get(addr, "/health"), Ok((200, body)) if body.contains("true")) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `nexus control-plane` process; killed on drop.
pub struct ControlPlane {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// DNS address when started with `--dns-listen`.
    pub dns: Option<SocketAddr>,
    /// The bootstrap admin key the control plane wrote.
    pub admin_key: String,
    args: Vec<String>,
    _keys: tempdir::Dir,
}

impl ControlPlane {
    /// Starts with the embedded store in `data_dir`.
    pub fn embedded(data_dir: &std::path::Path) -> Self {
        Self::spawn(vec!["--data-dir".into(), data_dir.display().to_string()])
    }

    /// Starts with the embedded store in `data_dir` and more `nexus control-plane` flags.
    pub fn embedded_with(data_dir: &std::path::Path, flags: &[&str]) -> Self {
        let mut args = vec!["--data-dir".into(), data_dir.display().to_string()];
        args.extend(flags.iter().map(|f| f.to_string()));
        Self::spawn(args)
    }

    /// Sets `flag` to `value` for the next [`Self::restart`] (replacing an earlier value).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_owned(),
            _ => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
    }

    /// Starts on an etcd cluster.
    pub fn etcd(endpoint: &str) -> Self {
        Self::spawn(vec!["--etcd".into(), endpoint.into()])
    }

    /// Starts with the embedded store, DNS on a free port and the given lease TTL.
    pub fn embedded_with_dns(data_dir: &std::path::Path, lease_ttl: &str) -> Self {
        Self::spawn(vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--dns-listen".into(),
            "127.0.0.1:0".into(),
            "--lease-ttl".into(),
            lease_ttl.into(),
        ])
    }

    fn spawn(mut args: Vec<String>) -> Self {
        let keys = tempdir::Dir::new("admin-key");
        let key_file = keys.0.join("admin.key");
        args.push("--admin-key-file".into());
        args.push(key_file.display().to_string());
        let (child, addr, dns) = Self::launch(&args, "127.0.0.1:0");
        let admin_key = std::fs::read_to_string(&key_file)
            .expect("the control plane wrote its bootstrap admin key")
            .trim()
            .to_owned();
        Self {
            child: Some(child),
            addr,
            dns,
            admin_key,
            args,
            _keys: keys,
        }
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the child to wait on.
    pub fn terminate(&mut self) -> Child {
        let c = self.child.take().expect("control plane running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c
    }

    fn launch(args: &[String], listen: &str) -> (Child, SocketAddr, Option<SocketAddr>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("control-plane")
            .arg("--listen")
            .arg(listen)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nexus control-plane");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let wants_dns = args.iter().any(|a| a == "--dns-listen");
        let mut dns = None;
        let addr: SocketAddr = loop {
            line.clear();
            assert!(
                lines.read_line(&mut line).unwrap() > 0,
                "control plane exited before it was ready"
            );
            if let Some(rest) = line.split(" DNS on ").nth(1) {
                dns = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.split(" listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        if wants_dns && dns.is_none() {
            line.clear();
            lines.read_line(&mut line).unwrap();
            if let Some(rest) = line.split(" DNS on ").nth(1) {
                dns = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        (child, addr, dns)
    }

    /// Stops the process and starts it again on the same address with the same store.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (child, addr, dns) = Self::launch(&self.args, &self.addr.to_string());
        assert_eq!(addr, self.addr);
        self.child = Some(child);
        self.dns = dns;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A development federation CA and a certificate per region (`nexus federation-certs`).
pub fn federation_certs(regions: &[&str]) -> tempdir::Dir {
    let dir = tempdir::Dir::new("fed-certs");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["federation-certs", "--out"])
        .arg(&dir.0)
        .arg("--regions")
        .arg(regions.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Runs `nexusctl` against `cp` with `admin_key` (none: no key at all), whatever happens.
pub fn nexusctl_as(cp: &ControlPlane, admin_key: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexusctl"));
    c.args(args).env("NEXUS_CONTROL_PLANE", cp.url());
    match admin_key {
        Some(k) => c.env("NEXUS_ADMIN_KEY", k),
        None => c.env_remove("NEXUS_ADMIN_KEY"),
    };
    c.env_remove("NEXUS_ADMIN_KEY_FILE")
        .output()
        .expect("run nexusctl")
}

/// Runs `nexusctl` against `cp` with its admin key; panics (with stderr) unless it succeeds.
pub fn nexusctl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = nexusctl_as(cp, Some(&cp.admin_key), args);
    assert!(
        out.status.success(),
        "nexusctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
