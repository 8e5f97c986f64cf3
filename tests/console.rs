//! The web console in a real browser: headless Chromium, driven over chromedriver's HTTP
//! WebDriver API, against a real `nexus console` talking to a real `nexus control-plane` (admin
//! keys required) and three federated `nexus gateway` processes. Nothing is faked.
//!
//! Checks: login with the bootstrap admin key; the topology shows every region and link, and
//! the wasm has hydrated (the live stream is open, and clicking a region on the map shows its
//! details, which only the wasm can do); killing a gateway turns its region and links unhealthy
//! on the already-open page within seconds, without a reload (the client-side selection
//! survives); a route created with the form is listed by `nexusctl routes list`; a key created
//! through the confirmation step shows its secret once. Screenshots go to
//! `$NEXUS_CACHE/artifacts/console/`.
//!
//! The console serves the browser bundle compiled into the binary (`web-console/bundle/`, kept
//! in step with its sources by `web-console/tests/bundle.rs`), so no wasm toolchain is needed
//! here; chromium and chromium-driver are (`scripts/test` installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// === processes ===

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("nexus-console-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `nexus <args>` and reads its stdout until `ready` returns a value (what it printed
/// once listening); the rest of its output is drained in the background.
fn start<T>(
    args: &[&str],
    mut ready: impl FnMut(&str, &mut Vec<String>) -> Option<T>,
) -> (Proc, T) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("NEXUS_CONTROL_PLANE")
        .env_remove("NEXUS_CONSOLE_SITE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexus");
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let value = loop {
        let mut line = String::new();
        let n = lines.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "nexus {args:?} exited before it was ready: {seen:?}");
        seen.push(line.trim().to_owned());
        if let Some(v) = ready(line.trim(), &mut seen) {
            break v;
        }
    };
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = lines.read_to_end(&mut sink);
    });
    (Proc(child), value)
}

/// The address after `marker` in `line`, up to the next space, comma or parenthesis.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let end = rest.find([' ', ',', '(']).unwrap_or(rest.len());
    rest[..end].trim_start_matches("http://").parse().ok()
}

struct Gateway {
    proc: Proc,
    federation: SocketAddr,
    metrics: SocketAddr,
    /// The adapter-facing gRPC address.
    grpc: SocketAddr,
}

fn gateway(
    dir: &Path,
    certs: &Path,
    cp: SocketAddr,
    region: &str,
    peers: &[(&str, SocketAddr)],
) -> Gateway {
    let c = |f: &str| certs.join(f).display().to_string();
    let state = dir.join(format!("state-{region}")).display().to_string();
    let mut args: Vec<String> = [
        "gateway",
        "--region",
        region,
        "--gateway-id",
        &format!("gw-{region}"),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--auth",
        "off",
        "--control-plane",
        &format!("http://{cp}"),
        "--state-dir",
        &state,
        "--federation-listen",
        "127.0.0.1:0",
        "--federation-cert",
        &c(&format!("{region}.pem")),
        "--federation-key",
        &c(&format!("{region}-key.pem")),
        "--federation-ca",
        &c("ca.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (peer, addr) in peers {
        args.push("--peer".into());
        args.push(format!("{peer}={addr}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut federation = None;
    let mut grpc = None;
    let (proc, metrics) = start(&args, |line, _| {
        if line.starts_with("nexus federation") {
            federation = addr_after(line, " on ");
        }
        if line.contains(" listening on ") {
            grpc = addr_after(line, " listening on ");
        }
        addr_after(line, "metrics on ")
    });
    Gateway {
        proc,
        federation: federation.expect("gateway printed its federation address"),
        metrics,
        grpc: grpc.expect("gateway printed its adapter address"),
    }
}

// === a minimal HTTP/1.1 client (chromedriver speaks plain HTTP on loopback) ===

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read the headers, then exactly the body: chromedriver keeps the connection open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).expect("read response");
        assert!(n > 0, "connection closed before the response headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read response body: {e}"),
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === WebDriver ===

/// The key of an element reference in WebDriver responses.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: SocketAddr,
    session: String,
    artifacts: PathBuf,
    _chromedriver: Proc,
    _profile: TempDir,
}

impl Browser {
    fn start(artifacts: PathBuf) -> Self {
        let port = free_port();
        let driver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let chromedriver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian chromium-driver; scripts/build-console installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(driver).is_ok() {
                let (code, body) = http(driver, "GET", "/status", None);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if code == 200 && v["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = TempDir::new("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.0.display()),
                ]
            }
        }}});
        let (code, body) = http(driver, "POST", "/session", Some(&caps));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(code, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        std::fs::create_dir_all(&artifacts).unwrap();
        Self {
            driver,
            session,
            artifacts,
            _chromedriver: chromedriver,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, raw) = http(
            self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        assert_eq!(code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Runs `script` in the page and returns its result.
    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().expect("element id").to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn click_xpath(&self, xpath: &str) {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "xpath", "value": xpath })),
        );
        let id = v[ELEMENT].as_str().expect("element id").to_owned();
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The text of the first element matching `css` (empty when there is none).
    fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        ))
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    fn attr(&self, css: &str, name: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? (e.getAttribute({}) || '') : '';",
            json!(css),
            json!(name)
        ))
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// Polls `check` until it holds or `within` passes; on timeout, saves a screenshot and
    /// fails with `what`.
    fn wait(&self, within: Duration, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if check(self) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!("timed out after {within:?} waiting for: {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails if the page's wasm panicked (console_error_panic_hook logs "panicked at") or a
    /// hydration error was logged; prints every error the browser logged.
    fn assert_no_client_errors(&self) {
        let logs = self.cmd("POST", "/se/log", Some(json!({ "type": "browser" })));
        for entry in logs.as_array().into_iter().flatten() {
            let level = entry["level"].as_str().unwrap_or("");
            let message = entry["message"].as_str().unwrap_or("");
            if level == "SEVERE" {
                eprintln!("browser: {message}");
            }
            assert!(
                !message.contains("panicked at")
                    && !message.to_lowercase().contains("hydration error"),
                "the browser logged: {message}"
            );
        }
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or(""));
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| (acc << 6) | x) << (6 * (4 - v.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..v.len().saturating_sub(1)]);
    }
    out
}

fn nexus_cache() -> PathBuf {
    std::env::var_os("NEXUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nexus"))
}

// === the tests ===

/// The browser tests run one at a time: each has its own cluster and browser, and two at
/// once on a small machine would only make their timing checks flaky.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn console_in_chromium_against_a_live_federated_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = nexus_cache();
    let artifacts = cache.join("artifacts/console");
    let dir = TempDir::new("cluster");
    let d = |p: &str| dir.0.join(p).display().to_string();

    // Control plane with admin keys required: the console logs in with the bootstrap key.
    let (_cp, cp) = start(
        &[
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &d("cp"),
            "--lease-ttl",
            "3s",
        ],
        |line, _| addr_after(line, "listening on "),
    );
    let admin_key = std::fs::read_to_string(dir.0.join("cp/admin.key"))
        .expect("bootstrap admin key")
        .trim()
        .to_owned();

    let certs = dir.0.join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["federation-certs", "--out", &d("certs"), "--regions"])
        .arg("a-east,b-west,c-south")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each region dials those after it, so start from the last.
    let c = gateway(&dir.0, &certs, cp, "c-south", &[]);
    let b = gateway(&dir.0, &certs, cp, "b-west", &[("c-south", c.federation)]);
    let a = gateway(
        &dir.0,
        &certs,
        cp,
        "a-east",
        &[("b-west", b.federation), ("c-south", c.federation)],
    );

    let (_console, console) = start(
        &[
            "console",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            &cp.to_string(),
        ],
        |line, _| addr_after(line, "nexus console on http://"),
    );
    let base = format!("http://{console}");

    let browser = Browser::start(artifacts);

    // Everything needs a login; a wrong key is refused.
    browser.goto(&format!("{base}/"));
    browser.wait(Duration::from_secs(10), "login page", |b| {
        b.url().ends_with("/login")
    });
    browser.type_into("input[name=key]", "nxk_0000000000000000_wrong");
    browser.click("#login");
    browser.wait(Duration::from_secs(10), "wrong key refused", |b| {
        b.text("#flash").contains("does not know that key")
    });
    browser.type_into("input[name=key]", &admin_key);
    browser.click("#login");
    browser.wait(Duration::from_secs(10), "topology after login", |b| {
        b.text("h1") == "Global topology"
    });

    // Every region and every link, up, with an RTT. Link state comes from the gateways'
    // `/v1/status`; a gateway build without that endpoint leaves links "unknown" (the map
    // says so) until a region dies.
    let reports_links = http(a.metrics, "GET", "/v1/status", None).0 == 200;
    let link_up = if reports_links { "up" } else { "unknown" };
    if !reports_links {
        eprintln!("the gateways do not serve /v1/status: links are expected to be unknown");
    }
    let regions = ["a-east", "b-west", "c-south"];
    let links = [
        "link-a-east-b-west",
        "link-a-east-c-south",
        "link-b-west-c-south",
    ];
    browser.wait(Duration::from_secs(20), "all regions and links up", |b| {
        regions
            .iter()
            .all(|r| b.attr(&format!("#region-{r}"), "data-state") == "up")
            && links
                .iter()
                .all(|l| b.attr(&format!("#{l}"), "data-state") == link_up)
    });
    assert!(
        !reports_links || browser.text("#map").contains(" ms"),
        "link RTTs on the map: {}",
        browser.text("#map")
    );

    // Hydration: the wasm opens the live stream, and a click on the map shows a region's
    // details beside it (a server-rendered page without the wasm ignores the click).
    browser.wait(Duration::from_secs(20), "live updates (hydrated)", |b| {
        b.attr("#live", "data-live") == "live"
    });
    assert!(browser.text("#selection").contains("Click a region"));
    browser.click("#region-b-west circle");
    browser.wait(
        Duration::from_secs(5),
        "the clicked region's details",
        |b| b.text("#selection h2") == "Selected region: b-west",
    );
    browser.screenshot("1-topology-hydrated");

    // Cut b-west off: its region and both its links turn unhealthy on the open page.
    let url_before = browser.url();
    drop(b.proc);
    let cut = Instant::now();
    browser.wait(Duration::from_secs(10), "b-west and its links down", |b| {
        b.attr("#region-b-west", "data-state") == "down"
            && b.attr("#link-a-east-b-west", "data-state") == "down"
            && b.attr("#link-b-west-c-south", "data-state") == "down"
            && b.attr("#link-a-east-c-south", "data-state") == link_up
    });
    eprintln!("the page showed the cut after {:?}", cut.elapsed());
    // No reload happened: same URL, and the client-side selection is still there.
    assert_eq!(browser.url(), url_before);
    assert_eq!(browser.text("#selection h2"), "Selected region: b-west");
    browser.screenshot("2-topology-region-down");

    // The region page, then the routes page through the navigation bar: after hydration
    // these are client-side navigations that load their data from the server functions.
    browser.click("#selection a");
    browser.wait(Duration::from_secs(10), "region page", |b| {
        b.text("h1") == "Region b-west"
    });
    assert!(
        browser.text("main").contains("no longer registered")
            || browser.text("main").contains("unreachable"),
        "the dead gateway is shown as such: {}",
        browser.text("main")
    );
    browser.click("header nav a[href='/routes']");
    browser.wait(Duration::from_secs(10), "routes page", |b| {
        b.text("h1") == "Routes" && !b.text("#route-form").is_empty()
    });
    assert_eq!(browser.url(), format!("{base}/routes"));

    // Message trace: a message published with `nexus-trace: 1` on a-east (subscribed to in
    // c-south) is shown as a timeline: received and routed at a-east, forwarded over the
    // federation link, arrived and delivered at c-south. An unknown id is explained.
    let sub = Proc(
        Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args([
                "--gateway",
                &format!("http://{}", c.grpc),
                "sub",
                "traced.>",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Published once c-south's interest has reached a-east.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http(a.metrics, "GET", "/v1/explain?subject=traced.x", None);
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let wanted = v["federation"]["regions"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["region"] == "c-south" && r["interest"] == true)
        });
        if code == 200 && wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a-east never learnt c-south's interest: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args([
            "--gateway",
            &format!("http://{}", a.grpc),
            "pub",
            "traced.x",
            "hello",
        ])
        .args(["-H", "nexus-trace=1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("message id "))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("nexusctl pub printed no message id: {text}"));
    browser.goto(&format!("{base}/trace?id={id}"));
    browser.wait(Duration::from_secs(20), "the message's timeline", |b| {
        let t = b.text("#trace-timeline");
        t.contains("received") && t.contains("delivered") && t.contains("c-south/gw-c-south")
    });
    assert!(
        browser
            .text("#trace-path")
            .contains("a-east/gw-a-east → c-south/gw-c-south"),
        "{}",
        browser.text("#trace-path")
    );
    // The path on the topology map: one arrow from a-east's gateway to c-south's.
    assert_eq!(browser.attr("#hop-1", "data-from"), "a-east/gw-a-east");
    assert_eq!(browser.attr("#hop-1", "data-to"), "c-south/gw-c-south");
    assert!(
        browser
            .attr("#trace-map line.map-link", "class")
            .starts_with("map-link"),
        "federation links drawn under the path"
    );
    assert!(
        browser.text("#trace-map").contains("1: +"),
        "hop label: {}",
        browser.text("#trace-map")
    );
    browser.screenshot("2b-trace");
    drop(sub);
    browser.goto(&format!("{base}/trace?id=01J00000000000000000000000"));
    browser.wait(Duration::from_secs(20), "an unknown id explained", |b| {
        let t = b.text("#trace-result");
        t.contains("No records of message") && t.contains("nexus-trace: 1")
    });
    // Search by time: the last ten minutes have the message; a window in the past does not;
    // a window that cannot be read is named.
    browser.goto(&format!("{base}/trace?subject=traced.%3E&since=10m"));
    browser.wait(
        Duration::from_secs(20),
        "traced messages of the last 10 minutes",
        |b| b.text("#trace-messages").contains(&id),
    );
    browser.goto(&format!(
        "{base}/trace?subject=&since=2000-01-01+00:00&until=2000-01-02+00:00"
    ));
    browser.wait(Duration::from_secs(20), "an empty window", |b| {
        b.text("#trace-result").contains("No traced messages")
    });
    browser.goto(&format!("{base}/trace?since=yesterday"));
    browser.wait(Duration::from_secs(20), "a bad window named", |b| {
        b.text("#trace-window").contains("neither a duration")
    });

    // Live page: the tail of traced.> shows a message published on a-east with its preview
    // redacted by the subject's setting; a gateway's warning (a schema violation under warn
    // enforcement) appears in the warnings table without a reload.
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args(["--control-plane", &cp.to_string()])
            .args(args)
            .env("NEXUS_ADMIN_KEY", &admin_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nexusctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&[
        "schemas",
        "set-tail-preview",
        "--subject",
        "traced.x",
        "--max-bytes",
        "64",
        "--redact",
        "card",
    ]);
    browser.goto(&format!("{base}/live?subject=traced.%3E"));
    browser.wait(
        Duration::from_secs(20),
        "the tail open on the live gateways",
        |b| {
            b.attr("#tail-state", "data-live") == "live"
                && b.text("#tail-stats").contains("2 gateway(s) tapped")
        },
    );
    let publish = |subject: &str, payload: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args([
                "--gateway",
                &format!("http://{}", a.grpc),
                "pub",
                subject,
                payload,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish("traced.x", r#"{"card":"4111-1111","n":1}"#);
    browser.wait(
        Duration::from_secs(20),
        "the tapped message, redacted",
        |b| {
            let t = b.text("#tail-messages");
            t.contains(r#"{"card":"***","n":1}"#)
                && t.contains("a-east/gw-a-east")
                && !t.contains("4111")
        },
    );
    browser.screenshot("2c-live-tail");
    let files = dir.0.join("schema.json");
    std::fs::write(
        &files,
        r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#,
    )
    .unwrap();
    ctl(&[
        "schemas",
        "register",
        "warned.x",
        "-f",
        files.to_str().unwrap(),
    ]);
    ctl(&["schemas", "set-enforcement", "warned.x", "warn"]);
    browser.wait(Duration::from_secs(20), "logs followed live", |b| {
        b.attr("#logs-state", "data-live") == "live"
    });
    browser.wait(Duration::from_secs(30), "a gateway warning, live", |b| {
        // Enforcement reaches the gateway within a moment: publish until it warns.
        publish("warned.x", r#"{"id":"seven"}"#);
        let t = b.text("#logs");
        t.contains("a-east/gw-a-east") && t.contains("subject=warned.x")
    });
    browser.screenshot("2d-live-logs");

    browser.goto(&format!("{base}/routes"));
    browser.wait(Duration::from_secs(10), "routes page again", |b| {
        b.text("h1") == "Routes" && !b.text("#route-form").is_empty()
    });

    // A route created with the form is visible through nexusctl.
    browser.type_into("#route-form input[name=name]", "console-orders");
    browser.type_into("#route-form input[name=subjects]", "orders.>");
    browser.type_into("#route-form input[name=failover]", "c-south, a-east");
    browser.type_into("#route-form input[name=description]", "made in the console");
    browser.click("#route-create");
    browser.wait(Duration::from_secs(10), "route created", |b| {
        b.text("#flash").contains("Route console-orders created")
    });
    assert!(browser.text("#routes").contains("c-south → a-east"));
    browser.screenshot("3-route-created");
    let listed = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args(["--control-plane", &cp.to_string(), "routes", "list"])
        .env("NEXUS_ADMIN_KEY", &admin_key)
        .output()
        .unwrap();
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && listed_text.contains("console-orders"),
        "nexusctl routes list: {listed_text} {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(listed_text.contains("c-south,a-east"), "{listed_text}");

    // A key: the form asks for confirmation, then shows the secret once.
    browser.goto(&format!("{base}/keys"));
    browser.wait(Duration::from_secs(10), "keys page", |b| {
        b.text("h1") == "API keys"
    });
    browser.type_into("#key-form input[name=name]", "console-billing");
    browser.type_into("#key-form input[name=publish]", "billing.>");
    browser.click("#key-create");
    browser.wait(Duration::from_secs(10), "confirmation", |b| {
        b.text("#confirm")
            .contains("Create key \"console-billing\"")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "secret shown", |b| {
        b.text("#new-secret").starts_with("nxk_")
    });
    browser.screenshot("4-key-created");
    let first_secret = browser.text("#new-secret");
    browser.goto(&format!("{base}/keys"));
    browser.wait(Duration::from_secs(10), "secret gone on reload", |b| {
        b.text("h1") == "API keys" && b.text("#new-secret").is_empty()
    });
    assert!(browser.text("#keys").contains("console-billing"));

    // Rotating it: confirmation, then a new secret, once; the old one overlaps for an hour.
    browser.click_xpath("//tr[td[text()='console-billing']]//button[contains(., 'Rotate')]");
    browser.wait(Duration::from_secs(10), "rotate confirmation", |b| {
        b.text("#confirm").contains("Rotate key console-billing")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "rotated secret shown", |b| {
        let s = b.text("#new-secret");
        s.starts_with("nxk_") && s != first_secret
    });
    assert!(browser.text("#keys").contains("rotating"));

    // Its rate limits: bad input is named before anything is asked, a good one is confirmed,
    // shown in the list and stored (nexusctl sees it), and cleared again.
    let billing_id = browser
        .js("return [...document.querySelectorAll('#keys tbody tr')].find(r => r.textContent.includes('console-billing')).dataset.key")
        .as_str()
        .expect("the key's row")
        .to_owned();
    let choose = |form: &str| {
        browser.js(&format!(
            "document.querySelector('{form} select[name=id]').value = {}; return true",
            json!(billing_id)
        ));
    };
    let key_json = || {
        let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args([
                "--control-plane",
                &cp.to_string(),
                "keys",
                "list",
                "-o",
                "json",
            ])
            .env("NEXUS_ADMIN_KEY", &admin_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .and_then(|a| a.iter().find(|k| k["id"] == json!(billing_id)).cloned())
            .unwrap_or_else(|| panic!("key {billing_id} not in nexusctl keys list: {all}"))
    };
    choose("#limits-form");
    browser.type_into("#limits-form input[name=msgs_per_sec]", "fast");
    browser.click("#limits-set");
    browser.wait(Duration::from_secs(10), "a bad rate named", |b| {
        b.text("#flash")
            .contains("messages per second must be a whole number")
            && b.text("#confirm").is_empty()
    });
    choose("#limits-form");
    browser.type_into("#limits-form input[name=burst_msgs]", "10");
    browser.click("#limits-set");
    browser.wait(
        Duration::from_secs(10),
        "a burst without a rate named",
        |b| {
            b.text("#flash")
                .contains("burst needs a messages-per-second rate")
        },
    );
    choose("#limits-form");
    browser.type_into("#limits-form input[name=msgs_per_sec]", "100");
    browser.type_into("#limits-form input[name=burst_msgs]", "200");
    browser.type_into("#limits-form input[name=bytes_per_sec]", "1048576");
    browser.click("#limits-set");
    browser.wait(Duration::from_secs(10), "limits confirmation", |b| {
        b.text("#confirm").contains("Limit key console-billing")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "limits set", |b| {
        b.text("#flash").contains("limits: 100 msgs/s (burst 200), 1048576 bytes/s")
            && b.js("return [...document.querySelectorAll('#keys tbody tr')].some(r => r.textContent.includes('console-billing') && r.querySelector('.limits').textContent.includes('100 msgs/s (burst 200)'))") == json!(true)
    });
    browser.screenshot("4c-key-limits");
    let stored = key_json();
    assert_eq!(stored["limits"]["msgs_per_sec"], json!(100), "{stored}");
    assert_eq!(stored["limits"]["burst_msgs"], json!(200), "{stored}");
    assert_eq!(
        stored["limits"]["bytes_per_sec"],
        json!(1048576),
        "{stored}"
    );
    choose("#limits-form");
    browser.click("#limits-clear");
    browser.wait(Duration::from_secs(10), "clear limits confirmation", |b| {
        b.text("#confirm")
            .contains("Clear the rate limits of key console-billing")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "limits cleared", |b| {
        b.js("return [...document.querySelectorAll('#keys tbody tr')].some(r => r.textContent.includes('console-billing') && r.querySelector('.limits').textContent == 'unlimited')") == json!(true)
    });
    assert_eq!(key_json()["limits"]["msgs_per_sec"], json!(0));

    // Its certificate binding: a client certificate from `nexus certs`, pasted as PEM, plus a
    // DNS name; a paste that is no certificate is named at once, a bad fingerprint by the
    // control plane after confirmation; then the binding is lifted.
    let client_pki = dir.0.join("client-pki");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["certs", "--out", &d("client-pki"), "--client", "billing"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem_path = client_pki.join("clients/billing.pem");
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    let fingerprint =
        nexus_gateway::policy::ClientCert::from_der(&nexus_tls::load_certs(&pem_path).unwrap()[0])
            .sha256;
    choose("#binding-form");
    browser.type_into("#binding-form textarea[name=pem]", "not a certificate");
    browser.click("#binding-set");
    browser.wait(Duration::from_secs(10), "a bad paste named", |b| {
        b.text("#flash").contains("holds no PEM certificate") && b.text("#confirm").is_empty()
    });
    choose("#binding-form");
    browser.type_into("#binding-form input[name=sha256]", "zz");
    browser.click("#binding-set");
    browser.wait(
        Duration::from_secs(10),
        "bad fingerprint confirmation",
        |b| b.text("#confirm").contains("Bind key console-billing"),
    );
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "a bad fingerprint named", |b| {
        b.text("#flash").contains("is not a SHA-256 fingerprint")
    });
    assert_eq!(key_json()["cert_binding"], Value::Null);
    choose("#binding-form");
    browser.type_into("#binding-form input[name=names]", "billing.client.nexus");
    browser.type_into("#binding-form textarea[name=pem]", &pem);
    browser.click("#binding-set");
    browser.wait(Duration::from_secs(10), "binding confirmation", |b| {
        let c = b.text("#confirm");
        c.contains("Bind key console-billing") && c.contains(&fingerprint)
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "binding shown", |b| {
        b.js(&format!("return [...document.querySelectorAll('#keys tbody tr')].some(r => r.textContent.includes('console-billing') && r.querySelector('.binding').textContent == 'sha256 {fingerprint}, name billing.client.nexus')")) == json!(true)
    });
    browser.screenshot("4d-key-binding");
    let stored = key_json();
    assert_eq!(
        stored["cert_binding"],
        json!({ "sha256": [fingerprint], "names": ["billing.client.nexus"] }),
        "{stored}"
    );
    choose("#binding-form");
    browser.click("#binding-clear");
    browser.wait(Duration::from_secs(10), "lift binding confirmation", |b| {
        b.text("#confirm")
            .contains("Lift the certificate binding of key console-billing")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "binding lifted", |b| {
        b.js("return [...document.querySelectorAll('#keys tbody tr')].some(r => r.textContent.includes('console-billing') && r.querySelector('.binding').textContent == 'none')") == json!(true)
    });
    assert_eq!(key_json()["cert_binding"], Value::Null);

    // Revoking it takes a confirmation too; cancelling changes nothing.
    browser.click_xpath("//tr[td[text()='console-billing']]//button[contains(., 'Revoke')]");
    browser.wait(
        Duration::from_secs(10),
        "revoke confirmation to cancel",
        |b| b.text("#confirm").contains("Revoke key console-billing"),
    );
    browser.click("#confirm-no");
    browser.wait(Duration::from_secs(10), "cancelled", |b| {
        b.text("#flash").contains("Cancelled") && b.text("#confirm").is_empty()
    });
    browser.click_xpath("//tr[td[text()='console-billing']]//button[contains(., 'Revoke')]");
    browser.wait(Duration::from_secs(10), "revoke confirmation", |b| {
        b.text("#confirm").contains("Revoke key console-billing")
    });
    browser.click("#confirm-yes");
    browser.wait(Duration::from_secs(10), "key revoked", |b| {
        b.text("#flash").contains("revoked")
            && b.js("return [...document.querySelectorAll('#keys tr')].some(r => r.textContent.includes('console-billing') && r.textContent.includes('revoked'))") == json!(true)
    });

    // The audit trail page: the revocation just made in the console, by the logged-in key,
    // from the console's own address; filtered to the revocation with the form.
    let admin_id = nexus_proto::keys::parse(&admin_key).unwrap().0.to_owned();
    // Reached from the (hydrated) navigation bar, as an operator would.
    browser.click("header nav a[href='/audit']");
    browser.wait(Duration::from_secs(10), "audit trail page", |b| {
        b.text("h1") == "Audit trail"
            && b.js(&format!("return [...document.querySelectorAll('#audit tbody tr')].some(r => r.textContent.includes('keys.revoke') && r.textContent.includes('{admin_id}') && r.textContent.includes('127.0.0.1:'))")) == json!(true)
    });
    browser.type_into("#audit-form input[name=action]", "keys.revoke");
    browser.click("#audit-filter");
    browser.wait(Duration::from_secs(10), "audit trail filtered", |b| {
        b.url().contains("action=keys.revoke")
            && b.js("const rows = [...document.querySelectorAll('#audit tbody tr')]; return rows.length == 1 && rows[0].textContent.includes('revoked')") == json!(true)
    });
    browser.screenshot("4b-audit-trail");

    // Schemas: two versions registered with nexusctl, their diff, and a draft checked.
    let nexusctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args(["--control-plane", &cp.to_string()])
            .args(args)
            .env("NEXUS_ADMIN_KEY", &admin_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nexusctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v1 = dir.0.join("v1.json");
    let v2 = dir.0.join("v2.json");
    std::fs::write(
        &v1,
        r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#,
    )
    .unwrap();
    std::fs::write(
        &v2,
        r#"{"type":"object","properties":{"id":{"type":"integer"},"note":{}},"required":["id"]}"#,
    )
    .unwrap();
    for f in [&v1, &v2] {
        nexusctl(&[
            "schemas",
            "register",
            "orders.created",
            "-f",
            &f.display().to_string(),
        ]);
    }
    browser.goto(&format!("{base}/schemas/orders.created"));
    browser.wait(Duration::from_secs(10), "schema page with a diff", |b| {
        b.text("h1") == "Schema orders.created"
            && b.js("return [...document.querySelectorAll('#diff .added')].some(e => e.textContent.includes('\"note\"'))") == json!(true)
    });
    browser.type_into(
        "#check-form textarea[name=draft]",
        r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#,
    );
    browser.click("#check-submit");
    browser.wait(
        Duration::from_secs(10),
        "incompatible draft explained",
        |b| {
            let r = b.text("#check-result");
            r.contains("Not compatible") && r.contains("/properties/id")
        },
    );
    browser.screenshot("5-schema-check");
    browser.assert_no_client_errors();

    drop(a);
    drop(c);
}

/// `nexus dev` starts the console too, hydrated from the bundle compiled into the binary (a
/// first run has no wasm toolchain): its admin API is open, so an empty key logs in, the map
/// shows the three dev regions and their links live, and a click on a region shows its
/// details, which only the hydrated page does. The regions are clusters of two gateways: a
/// region's page shows each gateway's cluster link to the other and its homes elsewhere.
#[test]
fn nexus_dev_serves_the_console() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = nexus_cache();
    let dir = TempDir::new("dev");
    let any = "127.0.0.1:0";
    let (_dev, console) = start(
        &[
            "dev",
            "--listen",
            any,
            "--metrics-listen",
            any,
            "--control-plane-listen",
            any,
            "--dns-listen",
            any,
            "--console-listen",
            any,
            "--dev-dir",
            &dir.0.display().to_string(),
            "--gateways-per-region",
            "2",
        ],
        |line, seen| {
            let console = addr_after(line, "console       http://")?;
            // The first region's metrics address, to see whether gateways report links.
            let metrics = seen.iter().find_map(|l| {
                let rest = l.split("metrics http://").nth(1)?;
                rest.split('/').next()?.parse::<SocketAddr>().ok()
            })?;
            Some((console, metrics))
        },
    );
    let (console, metrics) = console;
    let link_up = if http(metrics, "GET", "/v1/status", None).0 == 200 {
        "up"
    } else {
        "unknown"
    };
    let browser = Browser::start(cache.join("artifacts/console"));
    browser.goto(&format!("http://{console}/login"));
    browser.click("#login");
    browser.wait(Duration::from_secs(10), "topology", |b| {
        b.text("h1") == "Global topology"
    });
    assert!(browser.text("header").contains("admin API open"));
    browser.wait(Duration::from_secs(20), "dev regions and links up", |b| {
        ["us-east", "eu-west", "ap-south"]
            .iter()
            .all(|r| b.attr(&format!("#region-{r}"), "data-state") == "up")
            && [
                "link-ap-south-eu-west",
                "link-ap-south-us-east",
                "link-eu-west-us-east",
            ]
            .iter()
            .all(|l| b.attr(&format!("#{l}"), "data-state") == link_up)
            && b.attr("#live", "data-live") == "live"
    });
    assert!(browser.text("#selection").contains("Click a region"));
    browser.click("#region-eu-west circle");
    browser.wait(
        Duration::from_secs(5),
        "the clicked region's details (hydrated)",
        |b| b.text("#selection h2") == "Selected region: eu-west",
    );
    browser.screenshot("6-nexus-dev-topology");
    // A region of two gateways: each shows its cluster link to the other, and its home in
    // every other region.
    browser.goto(&format!("http://{console}/regions/eu-west"));
    browser.wait(Duration::from_secs(20), "the region's cluster links", |b| {
        // The first gateway of a region keeps the region's name as its id (gw-eu-west).
        let one = b.text("#gateway-gw-eu-west table.cluster-links tbody");
        let two = b.text("#gateway-gw-eu-west-2 table.cluster-links tbody");
        let homes = b.text("#gateway-gw-eu-west table.homes tbody");
        one.contains("gw-eu-west-2")
            && two.contains("gw-eu-west")
            && ["us-east", "ap-south"]
                .iter()
                .all(|r| homes.contains(&format!("gw-{r}")))
    });
    browser.screenshot("7-nexus-dev-region-cluster");
    browser.assert_no_client_errors();
}
