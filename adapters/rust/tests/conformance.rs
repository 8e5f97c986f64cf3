//! The cross-language conformance suite, run with the Rust adapter: reads
//! `conformance/cases.json` (the cases every adapter runs; step language in
//! `conformance/README.md`) and executes each case against real `nexus gateway` (and, for the
//! auth and discovery cases, `nexus control-plane`) processes on loopback ports.
//!
//! The `nexus` binary belongs to another package, so it is found as `$NEXUS_BIN`, else next to
//! this test's target directory (`target/debug/nexus`, built by `cargo build --workspace
//! --bins` or by `cargo test --workspace`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_client::{Bytes, Client, Error, Headers, Message, OutgoingMessage, Subscription};

#[path = "conformance/relay.rs"]
mod relay;

// === a small JSON reader (the cases file is plain JSON; no extra dependency needed) ===

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(Json::Num(n)) => Some(*n as u64),
            _ => None,
        }
    }
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(Json::Bool(true)))
    }
    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            _ => &[],
        }
    }
    fn fields(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(v) => v,
            _ => &[],
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    fields.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return Err(format!("bad object at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(format!("bad array at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len() && b"+-0123456789.eE".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad value at byte {start}"))
            }
            None => Err("unexpected end of input".into()),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at byte {}", self.i));
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let rest = std::str::from_utf8(&self.s[self.i..]).map_err(|e| e.to_string())?;
            let mut chars = rest.chars();
            let c = chars.next().ok_or("unterminated string")?;
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self.s.get(self.i).copied().ok_or("bad escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                .map_err(|e| e.to_string())?;
                            let code = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            self.i += 4;
                        }
                        other => out.push(other as char),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

// === real processes ===

fn nexus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NEXUS_BIN") {
        return p.into();
    }
    // target/debug/deps/conformance-<hash> -> target/debug/nexus
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("nexus"))
        .expect("target directory")
}

fn nexusctl_bin() -> PathBuf {
    std::env::var_os("NEXUSCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| nexus_bin().with_file_name("nexusctl"))
}

/// Kills the process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nexus <args>` and returns it with the stdout lines up to the first one containing
/// `marker`; the rest of stdout is drained in the background.
fn spawn_until(args: &[String], marker: &str, log: &Path) -> Result<(Proc, Vec<String>), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(nexus_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("NEXUS_CONTROL_PLANE")
        .env_remove("NEXUS_AUTH")
        .env_remove("NEXUS_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", nexus_bin().display()))?;
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let proc = Proc(child);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err(format!("exited before printing {marker:?}: {lines:?}"));
        }
        let done = line.contains(marker);
        lines.push(line.trim_end().to_owned());
        if done {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    Ok((proc, lines))
}

fn ready(metrics: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(metrics) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET /readyz HTTP/1.0\r\nHost: {metrics}\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
}

/// The body of `GET http://{addr}{path}`.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

fn http_json(addr: &str, path: &str) -> Result<Json, String> {
    JsonParser::parse(&http_get(addr, path)?)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

struct Gateway {
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
    grpc: String,
    metrics: String,
    federation: String,
    /// Serves adapters over TLS (`https://`; `gateway.tls` in the environment).
    tls: bool,
}

impl Gateway {
    fn start(&mut self) -> Result<(), String> {
        let mut args = self.args.clone();
        if !self.grpc.is_empty() {
            let i = args.iter().position(|a| a == "--listen").unwrap();
            args[i + 1] = self.grpc.clone();
            let i = args.iter().position(|a| a == "--metrics-listen").unwrap();
            args[i + 1] = self.metrics.clone();
            if let Some(i) = args.iter().position(|a| a == "--federation-listen") {
                args[i + 1] = self.federation.clone();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let (proc, lines) = loop {
            match spawn_until(&args, " listening on ", &self.log) {
                Ok(r) => break r,
                // A restarted gateway's old port may take a moment to free up.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e),
            }
        };
        for l in &lines {
            if l.contains("nexus federation")
                && let Some(addr) = l.rsplit(" on ").next()
            {
                self.federation = addr
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        let last = lines.last().cloned().unwrap_or_default();
        let rest = last.split(" listening on ").nth(1).ok_or("no banner")?;
        let mut parts = rest.split(", metrics on ");
        self.grpc = parts.next().unwrap_or_default().trim().to_owned();
        self.metrics = parts.next().unwrap_or_default().trim().to_owned();
        self.proc = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready(&self.metrics) {
            if Instant::now() > deadline {
                return Err("gateway did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
    fn url(&self) -> String {
        format!("{}://{}", scheme(self.tls), self.grpc)
    }
}

/// What a case runs against: a gateway, maybe a control plane, API keys by name.
struct Environment {
    dir: PathBuf,
    /// `gateways[0]` is the one `restart_gateway` acts on.
    gateways: Vec<Gateway>,
    /// The gateway of the second region (`remote_region`), federated with the first.
    remote: Option<Gateway>,
    remote_region: Option<String>,
    /// The TCP relay in front of the first gateway (`relay: true`).
    relay: Option<relay::Relay>,
    control_plane: Option<Proc>,
    dns: String,
    keys: HashMap<String, String>,
    /// With `gateway.tls`: the directories `nexus certs` wrote, by the names `connect` uses
    /// (`cluster`: the gateway's CA; `other`: another CA).
    pki: HashMap<String, PathBuf>,
}

const REGION: &str = "conformance";
const ZONE: &str = "nexus.local";
/// The validity of the gateway certificate in a `gateway.tls: "expired"` environment.
const EXPIRED_NOT_BEFORE: &str = "2020-01-01T00:00:00Z";
const EXPIRED_NOT_AFTER: &str = "2020-01-02T00:00:00Z";

impl Environment {
    fn start(spec: &Json, tag: &str) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("nexus-conformance-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let gw = spec.get("gateway").cloned().unwrap_or(Json::Null);
        let mut args: Vec<String> = [
            "gateway",
            "--region",
            REGION,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth",
            gw.str("auth").unwrap_or("off"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(max) = gw.num("max_payload") {
            args.extend(["--max-payload".into(), max.to_string()]);
        }
        if let Some(ms) = gw.num("shutdown_grace_ms") {
            args.extend(["--shutdown-grace-ms".into(), ms.to_string()]);
        }
        let tls = gw.str("tls").map(str::to_owned);
        let mut pki = HashMap::new();
        if let Some(mode) = &tls {
            // The gateway's certificate (for 127.0.0.1) and a client certificate from the
            // cluster CA, and a client certificate from another CA, all by `nexus certs`.
            for which in ["cluster", "other"] {
                let out = dir.join(format!("pki-{which}"));
                let status = std::process::Command::new(nexus_bin())
                    .arg("certs")
                    .arg("--out")
                    .arg(&out)
                    .args(["--gateway", &format!("{REGION}/conformance-tls@127.0.0.1")])
                    .args(["--client", "conformance"])
                    .output()
                    .map_err(|e| format!("nexus certs: {e}"))?;
                if !status.status.success() {
                    return Err(format!("nexus certs failed: {status:?}"));
                }
                pki.insert(which.to_owned(), out);
            }
            if mode == "expired" {
                // The same gateway certificate re-issued by the cluster CA, valid only on a
                // day in the past: nothing else is wrong with it.
                let status = std::process::Command::new(nexus_bin())
                    .arg("certs")
                    .arg("--out")
                    .arg(&pki["cluster"])
                    .args(["--gateway", &format!("{REGION}/conformance-tls@127.0.0.1")])
                    .args(["--not-before", EXPIRED_NOT_BEFORE])
                    .args(["--not-after", EXPIRED_NOT_AFTER])
                    .output()
                    .map_err(|e| format!("nexus certs: {e}"))?;
                if !status.status.success() {
                    return Err(format!("nexus certs (expired) failed: {status:?}"));
                }
            }
            let cert = pki["cluster"].join("gateways").join(REGION);
            args.extend([
                "--tls-cert".into(),
                cert.join("conformance-tls.pem").display().to_string(),
                "--tls-key".into(),
                cert.join("conformance-tls-key.pem").display().to_string(),
            ]);
            if mode == "mutual" {
                args.extend([
                    "--tls-client-ca".into(),
                    pki["cluster"].join("ca.pem").display().to_string(),
                ]);
            }
        }
        let mut keys = HashMap::new();
        keys.insert(
            "bad".to_owned(),
            "nxk_3f9a1c2b4d5e6f70_0123456789abcdef0123456789abcdef".to_owned(),
        );
        let mut control_plane = None;
        let mut dns = "127.0.0.1:1".to_owned();
        if spec.flag("control_plane") {
            let key_file = dir.join("admin.key");
            let cp_args: Vec<String> = vec![
                "control-plane".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                dir.join("data").display().to_string(),
                "--dns-listen".into(),
                "127.0.0.1:0".into(),
                "--admin-key-file".into(),
                key_file.display().to_string(),
                "--lease-ttl".into(),
                "3s".into(),
                "--dns-ttl".into(),
                "1s".into(),
            ];
            let (proc, lines) = spawn_until(&cp_args, " listening on ", &dir.join("cp.log"))?;
            control_plane = Some(proc);
            let mut cp_addr = String::new();
            for l in &lines {
                if let Some(r) = l.split(" DNS on ").nth(1) {
                    dns = r.split_whitespace().next().unwrap_or_default().to_owned();
                }
                if let Some(r) = l.split(" listening on ").nth(1) {
                    cp_addr = r.split_whitespace().next().unwrap_or_default().to_owned();
                }
            }
            let admin = std::fs::read_to_string(&key_file).map_err(|e| e.to_string())?;
            for (name, scopes) in spec.get("keys").map(Json::fields).unwrap_or_default() {
                let out = Command::new(nexusctl_bin())
                    .args(["keys", "create", name, "--publish"])
                    .arg(scopes.str("publish").unwrap_or(">"))
                    .arg("--subscribe")
                    .arg(scopes.str("subscribe").unwrap_or(">"))
                    .args(["-o", "json"])
                    .env("NEXUS_CONTROL_PLANE", format!("http://{cp_addr}"))
                    .env("NEXUS_ADMIN_KEY", admin.trim())
                    .output()
                    .map_err(|e| format!("nexusctl: {e}"))?;
                let v = JsonParser::parse(&String::from_utf8_lossy(&out.stdout))?;
                keys.insert(
                    name.clone(),
                    v.str("secret")
                        .ok_or("no secret in nexusctl output")?
                        .to_owned(),
                );
            }
            args.extend(["--control-plane".into(), format!("http://{cp_addr}")]);
            for route in spec.get("routes").map(Json::items).unwrap_or_default() {
                let file = dir.join("route.toml");
                let subjects: Vec<String> = route
                    .get("subjects")
                    .map(Json::items)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|j| match j {
                        Json::Str(x) => Some(format!("{x:?}")),
                        _ => None,
                    })
                    .collect();
                let toml = format!(
                    "name = {:?}\nsubjects = [{}]\npolicy = {:?}\nconsistency = {:?}\n",
                    route.str("name").unwrap_or_default(),
                    subjects.join(", "),
                    route.str("policy").unwrap_or("broadcast"),
                    route.str("consistency").unwrap_or("best_effort"),
                );
                std::fs::write(&file, toml).map_err(|e| e.to_string())?;
                let out = Command::new(nexusctl_bin())
                    .args(["routes", "apply", "-f"])
                    .arg(&file)
                    .env("NEXUS_CONTROL_PLANE", format!("http://{cp_addr}"))
                    .env("NEXUS_ADMIN_KEY", admin.trim())
                    .output()
                    .map_err(|e| format!("nexusctl: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "nexusctl routes apply: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        let remote_region = spec.str("remote_region").map(str::to_owned);
        let mut remote = None;
        if let Some(region) = &remote_region {
            // The first gateway's region sorts first, so it dials the remote one.
            let certs = dir.join("certs");
            let out = Command::new(nexus_bin())
                .args(["federation-certs", "--out"])
                .arg(&certs)
                .args(["--regions", &format!("{REGION},{region}")])
                .output()
                .map_err(|e| format!("federation-certs: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let fed = |r: &str| -> Vec<String> {
                let c = |f: String| certs.join(f).display().to_string();
                vec![
                    "--federation-listen".into(),
                    "127.0.0.1:0".into(),
                    "--federation-cert".into(),
                    c(format!("{r}.pem")),
                    "--federation-key".into(),
                    c(format!("{r}-key.pem")),
                    "--federation-ca".into(),
                    c("ca.pem".into()),
                ]
            };
            let mut remote_args = args.clone();
            remote_args[2] = region.clone(); // "gateway --region <region>"
            remote_args.extend(fed(region));
            remote_args.extend([
                "--gateway-id".into(),
                "conformance-remote".into(),
                "--state-dir".into(),
                dir.join("remote-state").display().to_string(),
            ]);
            let mut gw = Gateway {
                args: remote_args,
                log: dir.join("remote.log"),
                proc: None,
                grpc: String::new(),
                metrics: String::new(),
                federation: String::new(),
                tls: false,
            };
            gw.start()?;
            args.extend(fed(REGION));
            args.extend(["--peer".into(), format!("{region}={}", gw.federation)]);
            remote = Some(gw);
        }
        let mut gateways = Vec::new();
        let count = spec.num("gateways").unwrap_or(1);
        let cluster_certs = dir.join("cluster-certs");
        if spec.flag("cluster") {
            // A regional cluster: a certificate per gateway (`nexus certs`), linked over QUIC.
            let out = Command::new(nexus_bin())
                .args(["certs", "--out"])
                .arg(&cluster_certs)
                .args((0..count).flat_map(|i| {
                    [
                        "--gateway".to_owned(),
                        format!("{REGION}/conformance-gw-{i}"),
                    ]
                }))
                .output()
                .map_err(|e| format!("certs: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        for i in 0..count {
            // Every gateway gets its own id and state directory (config snapshot, spool).
            let mut args = args.clone();
            if spec.flag("cluster") {
                let pem = cluster_certs.join("gateways").join(REGION);
                args.extend([
                    "--federation-listen".into(),
                    "127.0.0.1:0".into(),
                    "--federation-cert".into(),
                    pem.join(format!("conformance-gw-{i}.pem"))
                        .display()
                        .to_string(),
                    "--federation-key".into(),
                    pem.join(format!("conformance-gw-{i}-key.pem"))
                        .display()
                        .to_string(),
                    "--federation-ca".into(),
                    cluster_certs.join("ca.pem").display().to_string(),
                ]);
            }
            args.extend([
                "--gateway-id".into(),
                format!("conformance-gw-{i}"),
                "--state-dir".into(),
                dir.join(format!("gw-state-{i}")).display().to_string(),
            ]);
            let mut gateway = Gateway {
                args,
                log: dir.join(format!("gateway-{i}.log")),
                proc: None,
                grpc: String::new(),
                metrics: String::new(),
                federation: String::new(),
                tls: tls.is_some(),
            };
            gateway.start()?;
            gateways.push(gateway);
        }
        if spec.flag("cluster") {
            for g in &gateways {
                wait_until(Duration::from_secs(20), || {
                    http_json(&g.metrics, "/v1/status")
                        .ok()
                        .and_then(|v| v.get("cluster").map(|c| c.items().len()))
                        == Some(gateways.len() - 1)
                })
                .map_err(|_| {
                    format!("gateway {} did not link to the rest of its cluster", g.grpc)
                })?;
            }
        }
        if let Some(region) = &remote_region {
            wait_until(Duration::from_secs(20), || {
                http_json(&gateways[0].metrics, "/v1/status")
                    .ok()
                    .and_then(|v| {
                        v.get("links").map(|l| {
                            l.items().iter().any(|l| {
                                l.str("region") == Some(region) && l.str("state") == Some("up")
                            })
                        })
                    })
                    .unwrap_or(false)
            })
            .map_err(|_| format!("the federation link to {region} did not come up"))?;
        }
        for route in spec.get("routes").map(Json::items).unwrap_or_default() {
            let (name, probe) = (
                route.str("name").unwrap_or_default(),
                route.str("probe").unwrap_or_default(),
            );
            for g in gateways.iter().chain(remote.iter()) {
                wait_until(Duration::from_secs(10), || {
                    http_json(&g.metrics, &format!("/v1/explain?subject={probe}"))
                        .ok()
                        .and_then(|v| {
                            v.get("federation")
                                .and_then(|f| f.get("route"))
                                .and_then(|r| r.str("name").map(|n| n == name))
                        })
                        .unwrap_or(false)
                })
                .map_err(|_| format!("route {name} did not reach gateway {}", g.grpc))?;
            }
        }
        Ok(Self {
            dir,
            gateways,
            remote,
            remote_region,
            relay: None,
            control_plane,
            dns,
            keys,
            pki,
        })
    }

    /// Waits until the first gateway knows that the remote region has interest in `subject`.
    fn await_interest(&self, subject: &str) -> Result<(), String> {
        let region = self.remote_region.clone().ok_or("no remote region")?;
        wait_until(Duration::from_secs(10), || {
            http_json(
                &self.gateways[0].metrics,
                &format!("/v1/explain?subject={subject}"),
            )
            .ok()
            .and_then(|v| {
                v.get("federation").and_then(|f| f.get("regions")).map(|r| {
                    r.items().iter().any(|r| {
                        r.str("region") == Some(region.as_str())
                            && r.get("interest") == Some(&Json::Bool(true))
                    })
                })
            })
            .unwrap_or(false)
        })
        .map_err(|_| format!("{region}'s interest in {subject} did not reach the first gateway"))
    }

    /// Waits until the first gateway routes `subject` by route `name` and its link to the
    /// remote region is up.
    fn await_route(&self, name: &str, subject: &str) -> Result<(), String> {
        let region = self.remote_region.clone().ok_or("no remote region")?;
        let metrics = &self.gateways[0].metrics;
        wait_until(Duration::from_secs(20), || {
            let routed = http_json(metrics, &format!("/v1/explain?subject={subject}"))
                .ok()
                .and_then(|v| {
                    v.get("federation")
                        .and_then(|f| f.get("route"))
                        .and_then(|r| r.str("name").map(|n| n == name))
                })
                .unwrap_or(false);
            let up = http_json(metrics, "/v1/status").ok().is_some_and(|st| {
                st.get("links").is_some_and(|l| {
                    l.items().iter().any(|l| {
                        l.str("region") == Some(region.as_str()) && l.str("state") == Some("up")
                    })
                })
            });
            routed && up
        })
        .map_err(|_| {
            format!("the first gateway does not route {subject} by {name} with its link up")
        })
    }

    /// Waits until the first gateway's link to the remote region is up and nothing it spooled
    /// for that region is unconfirmed (so a duplicate would have arrived by now).
    fn await_replicated(&self) -> Result<(), String> {
        let region = self.remote_region.clone().ok_or("no remote region")?;
        wait_until(Duration::from_secs(20), || {
            let Ok(st) = http_json(&self.gateways[0].metrics, "/v1/status") else {
                return false;
            };
            let up = st.get("links").is_some_and(|l| {
                l.items().iter().any(|l| {
                    l.str("region") == Some(region.as_str()) && l.str("state") == Some("up")
                })
            });
            let depth: u64 = st
                .get("routes")
                .map(|r| {
                    r.items()
                        .iter()
                        .filter(|r| r.str("region") == Some(region.as_str()))
                        .map(|r| r.num("spool_depth").unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            up && depth == 0
        })
        .map_err(|_| format!("the first gateway did not finish replicating to {region}"))
    }

    /// A series of the first gateway's /metrics whose labels include all of `labels`.
    fn metric(&self, name: &str, labels: &[&str]) -> Result<f64, String> {
        let text = http_get(&self.gateways[0].metrics, "/metrics")?;
        Ok(text
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| {
                series.split('{').next() == Some(name) && labels.iter().all(|w| series.contains(w))
            })
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0))
    }

    fn srv_url(&self, region: Option<&str>) -> String {
        format!(
            "nexus+srv://{}.{ZONE}?dns={}",
            region.unwrap_or(REGION),
            self.dns
        )
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.relay = None;
        for g in self.gateways.iter_mut().chain(self.remote.iter_mut()) {
            g.proc = None;
        }
        self.control_plane = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === the step interpreter ===

/// The `tls_*` fields of a `connect` step, resolved to files (read only with feature `tls`).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
#[derive(Clone, Default)]
struct TlsOptions {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
    /// `tls: true`: discovered gateways (`nexus+srv://`) over TLS too.
    srv: bool,
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidSubject { .. } => "invalid_subject",
        Error::NoResponders { .. } => "no_responders",
        Error::Timeout { .. } => "timeout",
        Error::Service { .. } => "service",
        Error::Limit { .. } => "limit",
        Error::Denied { .. } => "denied",
        Error::Discovery(_) => "discovery",
        Error::Invalid { .. } => "invalid",
        Error::Disconnected | Error::NotConfirmed { .. } => "disconnected",
        Error::Unavailable { .. } => "unavailable",
        Error::Closed => "closed",
        Error::Connect(_) => "connect",
        _ => "other",
    }
}

fn payload_of(s: &Json) -> Bytes {
    match s.num("payload_size") {
        Some(n) => Bytes::from(vec![b'x'; n as usize]),
        None => Bytes::from(s.str("payload").unwrap_or("").to_owned()),
    }
}

fn headers_of(s: &Json) -> Headers {
    let mut h = Headers::new();
    for (k, v) in s.get("headers").map(Json::fields).unwrap_or_default() {
        if let Json::Str(v) = v {
            h.insert(k.clone(), v.clone());
        }
    }
    h
}

/// The error and its sources, as `{:#}` with anyhow prints it: Rust errors keep their cause
/// out of `Display` (e.g. `Error::Connect` shows "connect: transport error" and the TLS reason
/// is a source), while `error_contains` means the whole message a user would see.
fn full_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn check_error<T>(s: &Json, r: Result<T, Error>, started: Instant) -> Result<(), String> {
    let kind = s.str("expect_error").unwrap_or_default();
    match r {
        Ok(_) => Err(format!("expected a {kind} error, got success")),
        Err(e) if error_kind(&e) != kind => Err(format!("expected {kind}, got {e}")),
        Err(e) => {
            if let Some(want) = s.str("error_contains")
                && !full_message(&e).contains(want)
            {
                return Err(format!(
                    "error {} does not contain {want:?}",
                    full_message(&e)
                ));
            }
            if let Some(max) = s.num("max_elapsed_ms")
                && started.elapsed() > Duration::from_millis(max)
            {
                return Err(format!("error came after {:?}", started.elapsed()));
            }
            Ok(())
        }
    }
}

async fn handler(spec: String, m: Message) -> Result<Bytes, nexus_client::ServiceError> {
    if spec == "echo" {
        Ok(m.payload)
    } else if let Some(p) = spec.strip_prefix("prefix:") {
        let mut out = p.as_bytes().to_vec();
        out.extend_from_slice(&m.payload);
        Ok(out.into())
    } else if let Some(e) = spec.strip_prefix("error:") {
        Err(nexus_client::ServiceError::new(e))
    } else if let Some(ms) = spec.strip_prefix("delay:") {
        let ms = ms
            .parse::<u64>()
            .map_err(|e| nexus_client::ServiceError::new(format!("bad handler {spec:?}: {e}")))?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(m.payload)
    } else if spec == "silent" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Bytes::new())
    } else if spec == "traceparent" {
        Ok(Bytes::from(m.traceparent().unwrap_or("").to_owned()))
    } else {
        Err(nexus_client::ServiceError::new(format!(
            "unknown handler {spec}"
        )))
    }
}

/// An operation started with `pending`: a request's answer, or `None` for a publish.
type PendingOp = tokio::task::JoinHandle<Result<Option<Bytes>, Error>>;

struct Runner {
    env: Environment,
    clients: HashMap<String, Client>,
    subs: HashMap<String, Subscription>,
    services: Vec<nexus_client::Service>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The gateway id `kill_connected_gateway` killed.
    killed: String,
    /// Operations started with `pending` and not awaited yet: the task (a request's answer,
    /// `None` for a publish) and the reply payload the request step expects.
    pending: HashMap<String, (PendingOp, Option<String>)>,
    /// The gateway `terminate_connected_gateway` sent SIGTERM to.
    terminated: Option<usize>,
    /// Batches and publishes received by the first gateway at `mark_metrics`.
    marks: (f64, f64),
}

impl Runner {
    async fn next(&mut self, sub: &str, ms: u64) -> Result<Message, String> {
        let s = self
            .subs
            .get_mut(sub)
            .ok_or(format!("no subscription {sub}"))?;
        match tokio::time::timeout(Duration::from_millis(ms), s.next_message()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!("{sub}: subscription ended")),
            Err(_) => Err(format!("{sub}: no message within {ms} ms")),
        }
    }

    /// The index and id of the gateway the step's client is connected to.
    fn connected_gateway(&self, s: &Json) -> Result<(usize, String), String> {
        let info = self
            .client(s)?
            .server_info()
            .ok_or("the client is not connected")?;
        let i = (0..self.env.gateways.len())
            .find(|i| format!("conformance-gw-{i}") == info.gateway_id)
            .ok_or(format!("no gateway {} here", info.gateway_id))?;
        Ok((i, info.gateway_id))
    }

    fn client(&self, s: &Json) -> Result<Client, String> {
        let name = s.str("client").unwrap_or_default();
        self.clients
            .get(name)
            .cloned()
            .ok_or(format!("no client {name}"))
    }

    async fn step(&mut self, s: &Json) -> Result<(), String> {
        let op = s.str("op").unwrap_or_default();
        let started = Instant::now();
        let retry = Duration::from_millis(s.num("retry_ms").unwrap_or(0));
        match op {
            "connect" => {
                let key = s
                    .str("key")
                    .and_then(|k| self.env.keys.get(k))
                    .cloned()
                    .unwrap_or_default();
                let url = match (s.str("via"), s.str("gateway")) {
                    (Some("srv"), _) => self.env.srv_url(s.str("region")),
                    (Some("relay"), _) => self.env.relay.as_ref().ok_or("no relay")?.url(),
                    (_, Some("remote")) => self.env.remote.as_ref().ok_or("no remote")?.url(),
                    _ => self.env.gateways[0].url(),
                };
                let local_check = s.get("local_payload_check") != Some(&Json::Bool(false));
                let retry_ms = s.num("publish_retry_ms");
                let name = s.str("client").unwrap_or_default().to_owned();
                let window = s.num("stream_window");
                let codec = match s.str("compression") {
                    None | Some("zstd") => Some(nexus_client::Codec::Zstd),
                    Some("lz4") => Some(nexus_client::Codec::Lz4),
                    Some("off") => None,
                    Some(other) => return Err(format!("unknown compression {other:?}")),
                };
                let tls = TlsOptions {
                    ca: s
                        .str("tls_ca")
                        .map(|w| self.env.pki.get(w).map(|d| d.join("ca.pem")))
                        .map(|p| p.ok_or("tls_ca names no PKI of this environment"))
                        .transpose()?,
                    client: s
                        .str("tls_client_cert")
                        .map(|w| {
                            self.env.pki.get(w).map(|d| {
                                (
                                    d.join("clients/conformance.pem"),
                                    d.join("clients/conformance-key.pem"),
                                )
                            })
                        })
                        .map(|p| p.ok_or("tls_client_cert names no PKI of this environment"))
                        .transpose()?,
                    server_name: s.str("tls_server_name").map(str::to_owned),
                    srv: s.get("tls") == Some(&Json::Bool(true)),
                };
                let connect = || {
                    let mut b = Client::builder(&url)
                        .transport(transport())
                        .api_key(key.clone())
                        .name(format!("conformance-{name}"))
                        .connect_timeout(Duration::from_secs(3))
                        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                        .compression(codec);
                    if let Some(w) = window {
                        b = b.stream_window(w as u32);
                    }
                    if let Some(ms) = retry_ms {
                        b = b.publish_retry_timeout(Duration::from_millis(ms));
                    }
                    let tls = tls.clone();
                    async move {
                        #[cfg(feature = "tls")]
                        {
                            if let Some(ca) = tls.ca {
                                b = b.tls_ca_file(ca)?;
                            }
                            if let Some((cert, key)) = tls.client {
                                b = b.tls_client_cert_files(cert, key)?;
                            }
                            if let Some(name) = tls.server_name {
                                b = b.tls_domain(name);
                            }
                            b = b.tls(tls.srv);
                        }
                        #[cfg(not(feature = "tls"))]
                        let _ = tls;
                        b.local_payload_check(local_check).connect().await
                    }
                };
                if s.get("expect_error").is_some() {
                    let r = connect().await;
                    // TLS 1.3 completes the client's side of the handshake before the gateway
                    // checks the client certificate, so this adapter sees that refusal as the
                    // first call's failure (`Error::Transport`), not `Error::Connect`: for a
                    // `connect` step both mean the connection was refused.
                    if s.str("expect_error") == Some("connect")
                        && let Err(e @ Error::Transport(_)) = &r
                    {
                        return match s.str("error_contains") {
                            Some(want) if !full_message(e).contains(want) => Err(format!(
                                "error {} does not contain {want:?}",
                                full_message(e)
                            )),
                            _ => Ok(()),
                        };
                    }
                    return check_error(s, r, started);
                }
                let c = loop {
                    match connect().await {
                        Ok(c) => break c,
                        Err(_) if started.elapsed() < retry => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                };
                self.clients.insert(name, c);
            }
            "close" => {
                if let Some(c) = self.clients.remove(s.str("client").unwrap_or_default()) {
                    c.close().await;
                }
            }
            "subscribe" => {
                let c = self.client(s)?;
                let subject = s.str("subject").unwrap_or_default();
                let r = match s.str("queue") {
                    Some(q) => c.queue_subscribe(subject, q).await,
                    None => c.subscribe(subject).await,
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                self.subs.insert(
                    s.str("sub").unwrap_or_default().to_owned(),
                    r.map_err(|e| e.to_string())?,
                );
            }
            "publish" => {
                let c = self.client(s)?;
                let msg = OutgoingMessage::new(s.str("subject").unwrap_or_default(), payload_of(s))
                    .with_headers(headers_of(s));
                let r = if s.flag("ack") {
                    if let Some(name) = s.str("pending") {
                        let task = tokio::spawn(async move {
                            c.publish_message_acked(msg).await.map(|_| None)
                        });
                        self.pending.insert(name.to_owned(), (task, None));
                        tokio::task::yield_now().await;
                        return Ok(());
                    }
                    c.publish_message_acked(msg).await.map(|_| ())
                } else {
                    c.publish_message(msg).await
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                r.map_err(|e| e.to_string())?;
            }
            "await" => {
                let (task, want) = self
                    .pending
                    .remove(s.str("pending").unwrap_or_default())
                    .ok_or("no such pending operation")?;
                let r = task.await.map_err(|e| e.to_string())?;
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                let got = r.map_err(|e| e.to_string())?;
                if let (Some(want), Some(got)) = (want, got)
                    && got != want.as_bytes()
                {
                    return Err(format!("expected reply {want:?}, got {got:?}"));
                }
            }
            "relay_hold" => self.env.relay.as_ref().ok_or("no relay")?.hold(),
            "relay_cut" => self.env.relay.as_ref().ok_or("no relay")?.cut(),
            "relay_block" => self.env.relay.as_ref().ok_or("no relay")?.block(true),
            "relay_pass" => self.env.relay.as_ref().ok_or("no relay")?.block(false),
            "await_route" => {
                let (name, subject) = (
                    s.str("name").unwrap_or_default().to_owned(),
                    s.str("subject").unwrap_or_default().to_owned(),
                );
                tokio::task::block_in_place(|| self.env.await_route(&name, &subject))?;
            }
            "kill_gateway" => self.env.gateways[0].proc = None,
            "start_gateway" => {
                let mut g = std::mem::replace(
                    &mut self.env.gateways[0],
                    Gateway {
                        args: Vec::new(),
                        log: PathBuf::new(),
                        proc: None,
                        grpc: String::new(),
                        metrics: String::new(),
                        federation: String::new(),
                        tls: false,
                    },
                );
                let (g, r) = tokio::task::spawn_blocking(move || {
                    let r = g.start();
                    (g, r)
                })
                .await
                .map_err(|e| e.to_string())?;
                self.env.gateways[0] = g;
                r?;
            }
            "expect_disconnected" => {
                let c = self.client(s)?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                while c.is_connected() {
                    if Instant::now() > deadline {
                        return Err("still connected".into());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "await_replicated" => tokio::task::block_in_place(|| self.env.await_replicated())?,
            "await_interest" => {
                let subject = s.str("subject").unwrap_or_default().to_owned();
                tokio::task::block_in_place(|| self.env.await_interest(&subject))?;
            }
            "mark_metrics" => {
                self.marks = (
                    self.env
                        .metric("nexus_session_batches_received_total", &[])?,
                    self.env.metric(
                        "nexus_messages_total",
                        &["pattern=\"pub\"", "direction=\"in\""],
                    )?,
                );
            }
            "expect_batched" => {
                let batches = self
                    .env
                    .metric("nexus_session_batches_received_total", &[])?
                    - self.marks.0;
                let pubs = self.env.metric(
                    "nexus_messages_total",
                    &["pattern=\"pub\"", "direction=\"in\""],
                )? - self.marks.1;
                let (want, max) = (
                    s.num("messages").unwrap_or(0) as f64,
                    s.num("max_batches").unwrap_or(0) as f64,
                );
                if pubs < want || batches > max || batches < 1.0 {
                    return Err(format!(
                        "{pubs} publishes arrived in {batches} batches; expected at least {want} in at most {max}"
                    ));
                }
                println!("  batched: {pubs} publishes in {batches} gRPC messages (at most {max})");
            }
            "expect_metric" => {
                let name = s.str("metric").unwrap_or_default();
                let labels: Vec<String> = match s.get("labels") {
                    Some(Json::Obj(fields)) => fields
                        .iter()
                        .map(|(k, v)| match v {
                            Json::Str(v) => format!("{k}=\"{v}\""),
                            _ => format!("{k}=?"),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let value = self.env.metric(name, &refs)?;
                let want = s.num("value").unwrap_or(0) as f64;
                if value != want {
                    return Err(format!("{name}{labels:?} is {value}, expected {want}"));
                }
            }
            "drain" => self.client(s)?.drain().await,
            "expect_end" => {
                let sub = s.str("sub").unwrap_or_default();
                let ms = s.num("timeout_ms").unwrap_or(5000);
                let sub_ref = self.subs.get_mut(sub).ok_or("no such subscription")?;
                match tokio::time::timeout(Duration::from_millis(ms), sub_ref.next_message()).await
                {
                    Ok(None) => {}
                    Ok(Some(m)) => {
                        return Err(format!("{sub}: expected the end, got {:?}", m.payload));
                    }
                    Err(_) => return Err(format!("{sub} did not end")),
                }
            }
            "publish_many" => {
                let c = self.client(s)?;
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..s.num("count").unwrap_or(0) {
                    c.publish(
                        s.str("subject").unwrap_or_default(),
                        format!("{prefix}-{i}"),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
            "flush" => self.client(s)?.flush().await.map_err(|e| e.to_string())?,
            "expect_message" => {
                let m = self
                    .next(
                        s.str("sub").unwrap_or_default(),
                        s.num("timeout_ms").unwrap_or(5000),
                    )
                    .await?;
                if let Some(subject) = s.str("subject")
                    && m.subject != subject
                {
                    return Err(format!("expected subject {subject}, got {}", m.subject));
                }
                if (s.get("payload").is_some() || s.get("payload_size").is_some())
                    && m.payload != payload_of(s)
                {
                    return Err(format!("unexpected payload {:?}", m.payload));
                }
                for (k, v) in s.get("headers").map(Json::fields).unwrap_or_default() {
                    if let Json::Str(v) = v
                        && m.headers.get(k) != Some(v.as_str())
                    {
                        return Err(format!(
                            "header {k}: expected {v}, got {:?}",
                            m.headers.get(k)
                        ));
                    }
                }
                if s.flag("has_traceparent")
                    && !nexus_client::is_valid_traceparent(m.traceparent().unwrap_or(""))
                {
                    return Err("no valid traceparent".into());
                }
            }
            "expect_no_message" => {
                let sub = s.str("sub").unwrap_or_default();
                let within = s.num("within_ms").unwrap_or(100);
                let sub_ref = self.subs.get_mut(sub).ok_or("no such subscription")?;
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(within), sub_ref.next_message())
                        .await
                {
                    return Err(format!("{sub}: unexpected message on {}", m.subject));
                }
            }
            "expect_all" => {
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..s.num("count").unwrap_or(0) {
                    let m = self
                        .next(
                            s.str("sub").unwrap_or_default(),
                            s.num("timeout_ms").unwrap_or(10_000),
                        )
                        .await?;
                    let want = format!("{prefix}-{i}");
                    if m.payload != want.as_bytes() {
                        return Err(format!("expected {want} (in order), got {:?}", m.payload));
                    }
                }
            }
            "expect_exclusive" => {
                let count = s.num("count").unwrap_or(0) as usize;
                let names: Vec<String> = s
                    .get("subs")
                    .map(Json::items)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|j| match j {
                        Json::Str(x) => Some(x.clone()),
                        _ => None,
                    })
                    .collect();
                let mut seen: HashMap<Bytes, String> = HashMap::new();
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(10_000));
                while seen.len() < count {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "only {} of {count} messages reached the group",
                            seen.len()
                        ));
                    }
                    for n in &names {
                        if let Ok(m) = self.next(n, 20).await
                            && let Some(prev) = seen.insert(m.payload.clone(), n.clone())
                        {
                            return Err(format!("{:?} delivered to {prev} and {n}", m.payload));
                        }
                    }
                }
                for n in &names {
                    if let Ok(m) = self.next(n, 100).await {
                        return Err(format!("extra delivery {:?} to {n}", m.payload));
                    }
                }
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..count {
                    if !seen.contains_key(format!("{prefix}-{i}").as_bytes()) {
                        return Err(format!("{prefix}-{i} never reached the group"));
                    }
                }
            }
            "serve" => {
                let c = self.client(s)?;
                let spec = s.str("handler").unwrap_or_default().to_owned();
                let svc = c
                    .serve(
                        s.str("subject").unwrap_or_default(),
                        s.str("queue"),
                        move |m| handler(spec.clone(), m),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                self.services.push(svc);
            }
            "request" => {
                let c = self.client(s)?;
                let timeout = Duration::from_millis(s.num("timeout_ms").unwrap_or(0));
                let subject = s.str("subject").unwrap_or_default();
                if let Some(name) = s.str("pending") {
                    let (subject, headers, payload) =
                        (subject.to_owned(), headers_of(s), payload_of(s));
                    let task = tokio::spawn(async move {
                        c.request_with(&subject, headers, payload, timeout)
                            .await
                            .map(|m| Some(m.payload))
                    });
                    let want = s.str("expect_payload").map(str::to_owned);
                    self.pending.insert(name.to_owned(), (task, want));
                    // Let the request reach the gateway before the next step.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(());
                }
                let r = loop {
                    let r = c
                        .request_with(subject, headers_of(s), payload_of(s), timeout)
                        .await;
                    match r {
                        Err(_) if s.get("expect_error").is_none() && started.elapsed() < retry => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        r => break r,
                    }
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                let m = r.map_err(|e| e.to_string())?;
                if let Some(want) = s.str("expect_payload")
                    && m.payload != want.as_bytes()
                {
                    return Err(format!("expected reply {want:?}, got {:?}", m.payload));
                }
                if let Some(n) = s.num("expect_payload_size")
                    && m.payload.len() as u64 != n
                {
                    return Err(format!("reply of {} bytes", m.payload.len()));
                }
            }
            "listen_streams" => {
                let c = self.client(s)?;
                let mut listener = c
                    .listen_streams(s.str("subject").unwrap_or_default(), s.str("queue"))
                    .await
                    .map_err(|e| e.to_string())?;
                let hold = s.str("handler") == Some("hold");
                self.tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Some(mut st) = listener.accept().await {
                        if hold {
                            held.push(st); // accepted, kept open, never read
                            continue;
                        }
                        tokio::spawn(async move {
                            while let Some(Ok(m)) = st.recv().await {
                                if st.send(m.payload).await.is_err() {
                                    return;
                                }
                            }
                            let _ = st.finish().await;
                        });
                    }
                }));
            }
            "stream" => {
                let c = self.client(s)?;
                let subject = s.str("subject").unwrap_or_default();
                if s.get("expect_error").is_some() {
                    return check_error(s, c.open_stream(subject).await, started);
                }
                let st = c.open_stream(subject).await.map_err(|e| e.to_string())?;
                let (mut tx, mut rx) = st.split();
                let count = s.num("count").unwrap_or(0);
                let prefix = s.str("prefix").unwrap_or_default().to_owned();
                let p = prefix.clone();
                let sender = tokio::spawn(async move {
                    for i in 0..count {
                        tx.send(format!("{p}-{i}")).await?;
                    }
                    tx.finish().await?;
                    Ok::<_, Error>(tx)
                });
                let mut got = 0;
                while let Some(m) = rx.recv().await {
                    let m = m.map_err(|e| e.to_string())?;
                    if m.payload != format!("{prefix}-{got}").as_bytes() {
                        return Err(format!(
                            "stream: expected {prefix}-{got}, got {:?}",
                            m.payload
                        ));
                    }
                    got += 1;
                }
                let _tx = sender
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if got != count {
                    return Err(format!("stream: {got} of {count} frames came back"));
                }
            }
            "stream_blocks" => {
                let c = self.client(s)?;
                let mut st = c
                    .open_stream(s.str("subject").unwrap_or_default())
                    .await
                    .map_err(|e| e.to_string())?;
                let expect = s.num("expect_sent").unwrap_or(0);
                let block = Duration::from_millis(s.num("block_ms").unwrap_or(300));
                let mut sent = 0;
                while sent <= expect {
                    match tokio::time::timeout(block, st.send(format!("frame-{sent}"))).await {
                        Ok(r) => r.map_err(|e| e.to_string())?,
                        Err(_) => break,
                    }
                    sent += 1;
                }
                st.abort("conformance: done");
                if sent != expect {
                    return Err(format!(
                        "{sent} sends completed before one waited, expected {expect}"
                    ));
                }
            }
            "restart_gateway" => {
                self.env.gateways[0].proc = None;
                tokio::task::block_in_place(|| self.env.gateways[0].start())?;
            }
            "kill_connected_gateway" => {
                let (i, gateway_id) = self.connected_gateway(s)?;
                self.env.gateways[i].proc = None;
                self.killed = gateway_id;
            }
            "terminate_connected_gateway" => {
                let (i, gateway_id) = self.connected_gateway(s)?;
                let pid = self.env.gateways[i]
                    .proc
                    .as_ref()
                    .ok_or("that gateway is not running")?
                    .0
                    .id();
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
                if !status.success() {
                    return Err(format!("kill -TERM {pid} failed: {status}"));
                }
                self.killed = gateway_id;
                self.terminated = Some(i);
            }
            "expect_gateway_exited" => {
                let i = self.terminated.ok_or("no gateway was terminated")?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                let proc = self.env.gateways[i].proc.as_mut().ok_or("not running")?;
                let status = loop {
                    if let Some(status) = proc.0.try_wait().map_err(|e| e.to_string())? {
                        break status;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("gateway {} still running", self.killed));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                self.env.gateways[i].proc = None;
                if !status.success() {
                    return Err(format!("gateway {} exited with {status}", self.killed));
                }
            }
            "expect_other_gateway" => {
                let c = self.client(s)?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                loop {
                    let info = c.server_info();
                    if c.is_connected()
                        && info.as_ref().is_some_and(|i| i.gateway_id != self.killed)
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "expected a gateway other than {}, got {:?}",
                            self.killed,
                            info.map(|i| i.gateway_id)
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            "expect_eventually" => {
                let c = self.client(s)?;
                let payload = s.str("payload").unwrap_or_default().to_owned();
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(10_000));
                loop {
                    let _ = c
                        .publish(s.str("subject").unwrap_or_default(), payload.clone())
                        .await;
                    if let Ok(m) = self.next(s.str("sub").unwrap_or_default(), 100).await
                        && m.payload == payload.as_bytes()
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("never received {payload}"));
                    }
                }
            }
            "measure_failover" => self.measure_failover(s).await?,
            other => return Err(format!("unknown op {other}")),
        }
        Ok(())
    }

    /// Kills the gateway a subscriber (connected through DNS SRV, default settings) is on,
    /// `rounds` times, and measures the gap from the kill to the first message published after
    /// the kill (on the other gateway, every ~2 ms) that reaches the subscriber.
    async fn measure_failover(&mut self, s: &Json) -> Result<(), String> {
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
fn failover_rounds(s: &Json) -> u64 {
    std::env::var("NEXUS_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| s.num("rounds").unwrap_or(3))
}

/// Reads `sub` until a tick `<round>-<i>` with i > `after` arrives.
async fn tick_after(sub: &mut Subscription, round: u64, after: u64, ms: u64) -> Result<(), String> {
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
fn report_failover(lang: &str, mut gaps: Vec<Duration>, s: &Json) -> Result<(), String> {
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

/// 60 s a step; a failover measurement gets 30 s a round on top.
fn step_timeout(s: &Json) -> Duration {
    let extra = if s.str("op") == Some("measure_failover") {
        30 * failover_rounds(s)
    } else {
        0
    };
    Duration::from_secs(60 + extra)
}

async fn run_case(doc: &Json, case: &Json) -> Result<(), String> {
    let env_name = case.str("env").unwrap_or("open");
    let spec = doc
        .get("environments")
        .and_then(|e| e.get(env_name))
        .ok_or(format!("unknown environment {env_name}"))?;
    let name = case.str("name").unwrap_or_default().to_owned();
    let env = tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || Environment::start(&spec, &name)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut env = env;
    if spec.flag("relay") {
        let upstream = env.gateways[0].grpc.clone();
        env.relay = Some(
            relay::Relay::start(upstream)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut runner = Runner {
        env,
        clients: HashMap::new(),
        subs: HashMap::new(),
        services: Vec::new(),
        tasks: Vec::new(),
        killed: String::new(),
        pending: HashMap::new(),
        terminated: None,
        marks: (0.0, 0.0),
    };
    let mut result = Ok(());
    for (i, s) in case
        .get("steps")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let op = s.str("op").unwrap_or_default();
        match tokio::time::timeout(step_timeout(s), runner.step(s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(format!("step {} ({op}): {e}", i + 1));
                break;
            }
            Err(_) => {
                result = Err(format!(
                    "step {} ({op}): took over {} s",
                    i + 1,
                    step_timeout(s).as_secs()
                ));
                break;
            }
        }
    }
    for t in runner.tasks.drain(..) {
        t.abort();
    }
    for (_, (t, _)) in runner.pending.drain() {
        t.abort();
    }
    runner.services.clear();
    for (_, c) in runner.clients.drain() {
        c.close().await;
    }
    // Every session the first gateway opened came over the pass's transport (it may have
    // been restarted, which restarts both counters). Checked before the clients closed
    // would race their sessions; the counters only grow.
    if result.is_ok()
        && let (Ok(all), Ok(native)) = (
            runner.env.metric("nexus_connections_opened_total", &[]),
            runner.env.metric("nexus_native_sessions_opened_total", &[]),
        )
    {
        let expected = if NATIVE.load(std::sync::atomic::Ordering::Relaxed) {
            all
        } else {
            0.0
        };
        if native != expected {
            result = Err(format!(
                "{native} of the first gateway's {all} sessions came over the native transport; expected {expected}"
            ));
        }
    }
    result
}

/// Whether this pass connects over the native transport (docs/protocol.md §1.1) instead of
/// gRPC: every case runs over both, with direct addresses (`nexus+tcp://`, `nexus+tls://`)
/// and discovered gateways (`ClientBuilder::transport`).
static NATIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The transport for discovered gateways in the current pass.
fn transport() -> nexus_client::Transport {
    if NATIVE.load(std::sync::atomic::Ordering::Relaxed) {
        nexus_client::Transport::Native
    } else {
        nexus_client::Transport::Grpc
    }
}

/// The scheme of a direct gateway address in the current pass.
pub(crate) fn scheme(tls: bool) -> &'static str {
    match (NATIVE.load(std::sync::atomic::Ordering::Relaxed), tls) {
        (false, false) => "http",
        (false, true) => "https",
        (true, false) => "nexus+tcp",
        (true, true) => "nexus+tls",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/cases.json");
    let text = std::fs::read_to_string(&path).expect("conformance/cases.json");
    let doc = JsonParser::parse(&text).expect("cases.json is valid JSON");
    assert!(
        nexus_bin().exists(),
        "{} not found: build it with `cargo build --bin nexus --bin nexusctl` (or set NEXUS_BIN)",
        nexus_bin().display()
    );
    let mut failures = Vec::new();
    // NEXUS_CONFORMANCE_ONLY=a,b runs only those cases (while working on them).
    let only = std::env::var("NEXUS_CONFORMANCE_ONLY").ok();
    let cases: Vec<&Json> = doc
        .get("cases")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| Some(n) == c.str("name")))
        })
        .collect();
    let mut skipped = 0;
    // NEXUS_CONFORMANCE_TRANSPORT=grpc or native runs one pass only.
    let transports = match std::env::var("NEXUS_CONFORMANCE_TRANSPORT").as_deref() {
        Ok("grpc") => vec![false],
        Ok("native") => vec![true],
        _ => vec![false, true],
    };
    for native in transports {
        NATIVE.store(native, std::sync::atomic::Ordering::Relaxed);
        let transport = if native { "native" } else { "grpc" };
        let before = failures.len();
        for case in cases.iter().copied() {
            let name = case.str("name").unwrap_or_default();
            let started = Instant::now();
            let env_tls = case
                .str("env")
                .and_then(|e| doc.get("environments")?.get(e)?.get("gateway")?.get("tls"))
                .is_some();
            if env_tls && !cfg!(feature = "tls") {
                // `cargo test --workspace` builds nexus-client with `tls` (the binaries need it).
                println!(
                    "SKIP {name} [{transport}]: nexus-client built without its `tls` feature (use --features tls)"
                );
                skipped += 1;
                continue;
            }
            match run_case(&doc, case).await {
                Ok(()) => println!(
                    "PASS {name} [{transport}] ({} ms)",
                    started.elapsed().as_millis()
                ),
                Err(e) => {
                    println!("FAIL {name} [{transport}]: {e}");
                    failures.push(format!("{name} [{transport}]: {e}"));
                }
            }
        }
        println!(
            "rust conformance over {transport}: {} cases, {} failed",
            cases.len(),
            failures.len() - before
        );
    }
    println!(
        "rust conformance: {} failed, {skipped} skipped",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
