//! The processes a case runs against: `nexus gateway` and `nexus control-plane` on loopback
//! ports, started and stopped for each case's environment.

use super::*;

pub(crate) fn nexus_bin() -> PathBuf {
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

pub(crate) fn nexusctl_bin() -> PathBuf {
    std::env::var_os("NEXUSCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| nexus_bin().with_file_name("nexusctl"))
}

/// Kills the process on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nexus <args>` and returns it with the stdout lines up to the first one containing
/// `marker`; the rest of stdout is drained in the background.
pub(crate) fn spawn_until(
    args: &[String],
    marker: &str,
    log: &Path,
) -> Result<(Proc, Vec<String>), String> {
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

pub(crate) fn ready(metrics: &str) -> bool {
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
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

pub(crate) fn http_json(addr: &str, path: &str) -> Result<Json, String> {
    JsonParser::parse(&http_get(addr, path)?)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) struct Gateway {
    pub(crate) args: Vec<String>,
    pub(crate) log: PathBuf,
    pub(crate) proc: Option<Proc>,
    pub(crate) grpc: String,
    pub(crate) metrics: String,
    pub(crate) federation: String,
    /// Serves adapters over TLS (`https://`; `gateway.tls` in the environment).
    pub(crate) tls: bool,
}

impl Gateway {
    pub(crate) fn start(&mut self) -> Result<(), String> {
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
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", scheme(self.tls), self.grpc)
    }
}

/// What a case runs against: a gateway, maybe a control plane, API keys by name.
pub(crate) struct Environment {
    pub(crate) dir: PathBuf,
    /// `gateways[0]` is the one `restart_gateway` acts on.
    pub(crate) gateways: Vec<Gateway>,
    /// The gateway of the second region (`remote_region`), federated with the first.
    pub(crate) remote: Option<Gateway>,
    pub(crate) remote_region: Option<String>,
    /// The TCP relay in front of the first gateway (`relay: true`).
    pub(crate) relay: Option<relay::Relay>,
    pub(crate) control_plane: Option<Proc>,
    pub(crate) dns: String,
    pub(crate) keys: HashMap<String, String>,
    /// With `gateway.tls`: the directories `nexus certs` wrote, by the names `connect` uses
    /// (`cluster`: the gateway's CA; `other`: another CA).
    pub(crate) pki: HashMap<String, PathBuf>,
}

pub(crate) const REGION: &str = "conformance";
pub(crate) const ZONE: &str = "nexus.local";
/// The validity of the gateway certificate in a `gateway.tls: "expired"` environment.
pub(crate) const EXPIRED_NOT_BEFORE: &str = "2020-01-01T00:00:00Z";
pub(crate) const EXPIRED_NOT_AFTER: &str = "2020-01-02T00:00:00Z";

impl Environment {
    pub(crate) fn start(spec: &Json, tag: &str) -> Result<Self, String> {
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
    pub(crate) fn await_interest(&self, subject: &str) -> Result<(), String> {
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
    pub(crate) fn await_route(&self, name: &str, subject: &str) -> Result<(), String> {
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
    pub(crate) fn await_replicated(&self) -> Result<(), String> {
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
    pub(crate) fn metric(&self, name: &str, labels: &[&str]) -> Result<f64, String> {
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

    pub(crate) fn srv_url(&self, region: Option<&str>) -> String {
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

/// The `tls_*` fields of a `connect` step, resolved to files (read only with feature `tls`).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) client: Option<(PathBuf, PathBuf)>,
    pub(crate) server_name: Option<String>,
    /// `tls: true`: discovered gateways (`nexus+srv://`) over TLS too.
    pub(crate) srv: bool,
}
