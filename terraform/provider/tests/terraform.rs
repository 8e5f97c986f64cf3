//! End to end with the real `terraform` (skipped, saying so, when it is not installed): the
//! provider installed from a filesystem mirror, against a real control plane — apply, plan
//! without changes, drift after a `nexusctl` change, import of each Admin API resource, an
//! incompatible schema failing at plan time with the registry's reason, `terraform test` of
//! the provider and the modules, destroy — and `terraform/examples/local` (a control plane
//! and six gateways as processes, a message across regions, nothing left after destroy).

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn terraform_bin() -> Option<PathBuf> {
    // TERRAFORM names the binary to use, and only it (a path that does not exist: missing).
    if let Some(p) = std::env::var_os("TERRAFORM") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let fixed = PathBuf::from("/usr/local/bin/terraform");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("terraform"))
            .find(|p| p.exists())
    })
}

/// The workspace's target directory for the profile this test was built with.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-nexus"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `nexus` and `nexusctl` from the same target directory, built if missing.
fn nexus_bins() -> (PathBuf, PathBuf) {
    let dir = bin_dir();
    let (nexus, ctl) = (dir.join("nexus"), dir.join("nexusctl"));
    if !nexus.exists() || !ctl.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bin", "nexus", "--bin", "nexusctl"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --bin nexus --bin nexusctl failed"
        );
    }
    (nexus, ctl)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nexus-tf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies a directory tree, leaving out Terraform's working files.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        if name_s == ".terraform"
            || name_s == ".run"
            || name_s.starts_with("terraform.tfstate")
            || name_s == ".terraform.lock.hcl"
        {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Runs terraform in `dir` with the test's CLI configuration.
struct Tf {
    bin: PathBuf,
    cli_config: PathBuf,
}

impl Tf {
    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        // Options before positional arguments (terraform import insists).
        let sub = if args.first() == Some(&"state") { 2 } else { 1 };
        Command::new(&self.bin)
            .args(&args[..sub])
            .arg("-no-color")
            .args(&args[sub..])
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("TF_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run terraform")
    }

    /// Runs and asserts the exit code; returns stdout and stderr together.
    fn expect(&self, dir: &Path, args: &[&str], code: i32) -> String {
        let out = self.run(dir, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "terraform {args:?} in {} exited {:?}, expected {code}:\n{text}",
            dir.display(),
            out.status.code()
        );
        text
    }
}

/// A filesystem mirror holding the provider built for this test, and a CLI configuration
/// installing `nexus/nexus` from it (the way docs/deploy.md describes).
fn setup(tmp: &Path) -> Tf {
    let dir = tmp.join("mirror/registry.terraform.io/nexus/nexus/0.1.0/linux_amd64");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_terraform-provider-nexus"),
        dir.join("terraform-provider-nexus_v0.1.0"),
    )
    .unwrap();
    let cli_config = tmp.join("cli.tfrc");
    std::fs::write(
        &cli_config,
        format!(
            r#"provider_installation {{
  filesystem_mirror {{
    path    = "{}"
    include = ["registry.terraform.io/nexus/nexus"]
  }}
  direct {{
    exclude = ["registry.terraform.io/nexus/nexus"]
  }}
}}
"#,
            tmp.join("mirror").display()
        ),
    )
    .unwrap();
    Tf {
        bin: terraform_bin().unwrap(),
        cli_config,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A block of `n` consecutive loopback ports free for TCP and UDP right now.
fn free_block(n: u16) -> u16 {
    for _ in 0..200 {
        // Below the kernel's ephemeral range (32768-), so outgoing connections do not take them.
        let base = 20_000 + (rand_u16() % 12_000);
        if (base..base + n).all(|p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        }) {
            return base;
        }
    }
    panic!("no block of {n} free ports");
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.subsec_nanos() ^ std::process::id()) as u16
}

fn nexusctl(ctl: &Path, cp: &str, key_file: &Path, args: &[&str]) -> String {
    let out = Command::new(ctl)
        .args(args)
        .env("NEXUS_CONTROL_PLANE", cp)
        .env("NEXUS_ADMIN_KEY_FILE", key_file)
        .output()
        .expect("run nexusctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "nexusctl {args:?}: {text}");
    text
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn skip_without_terraform() -> bool {
    if terraform_bin().is_none() {
        eprintln!(
            "SKIPPED: terraform is missing (not at $TERRAFORM, /usr/local/bin/terraform or on PATH): \
             the Terraform provider, module and example tests did NOT run"
        );
        return true;
    }
    false
}

#[test]
fn provider_lifecycle_against_a_control_plane() {
    if skip_without_terraform() {
        return;
    }
    let (nexus, ctl) = nexus_bins();
    let tmp = TempDir::new("provider");
    let tf = setup(&tmp.0);
    let port = free_port();
    let cp_url = format!("http://127.0.0.1:{port}");
    let key_file = tmp.0.join("admin.key");
    let _cp = Proc(
        Command::new(&nexus)
            .args([
                "control-plane",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lease-ttl",
                "2s",
            ])
            .arg("--data-dir")
            .arg(tmp.0.join("cp"))
            .arg("--admin-key-file")
            .arg(&key_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the control plane"),
    );
    wait_for(
        "the control plane's admin key",
        Duration::from_secs(20),
        || key_file.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );

    let dir = tmp.0.join("config");
    copy_tree(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tf")),
        &dir,
    );
    let vars = [
        "-var".to_owned(),
        format!("control_plane={cp_url}"),
        "-var".to_owned(),
        format!("admin_key_file={}", key_file.display()),
    ];
    // The subcommand, the variables, then the rest.
    let with = |args: &[&str]| -> Vec<String> {
        let mut a = vec![args[0].to_owned()];
        a.extend(vars.iter().cloned());
        a.extend(args[1..].iter().map(|s| s.to_string()));
        a
    };
    let call = |args: &[&str], code: i32| {
        let a = with(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        tf.expect(&dir, &a, code)
    };

    tf.expect(&dir, &["init"], 0);
    let out = call(&["apply", "-auto-approve"], 0);
    assert!(out.contains("Apply complete! Resources: 7 added"), "{out}");
    // Nothing changes on a second plan.
    call(&["plan", "-detailed-exitcode"], 0);

    // A change made with nexusctl is drift on the next plan.
    let route = tmp.0.join("route.toml");
    std::fs::write(
        &route,
        "name = \"tf-route\"\nsubjects = [\"tf.>\"]\npolicy = \"nearest\"\nconsistency = \"async\"\n",
    )
    .unwrap();
    nexusctl(
        &ctl,
        &cp_url,
        &key_file,
        &["routes", "apply", "--file", route.to_str().unwrap()],
    );
    let out = call(&["plan", "-detailed-exitcode"], 2);
    assert!(
        out.contains("policy") && out.contains("\"nearest\" -> \"pinned\""),
        "{out}"
    );
    assert!(out.contains("1 to change"), "{out}");
    call(&["apply", "-auto-approve"], 0);
    call(&["plan", "-detailed-exitcode"], 0);

    // Import: forget each Admin API object, import it back, and plan no change.
    let key_id = tf.expect(&dir, &["output", "-raw", "key_id"], 0);
    for (addr, id) in [
        ("nexus_region.a", "tf-a"),
        ("nexus_region.b", "tf-b"),
        ("nexus_route.r", "tf-route"),
        ("nexus_schema.s", "tf.created"),
        ("nexus_api_key.k", key_id.trim()),
    ] {
        tf.expect(&dir, &["state", "rm", addr], 0);
        let a = with(&["import", addr, id]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = tf.expect(&dir, &a, 0);
        assert!(out.contains("Import successful"), "{out}");
    }
    call(&["plan", "-detailed-exitcode"], 0);
    // Importing what does not exist says so.
    let a = with(&["import", "nexus_route.r", "no-such-route"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    tf.expect(&dir, &["state", "rm", "nexus_route.r"], 0);
    let out = tf.expect(&dir, &a, 1);
    assert!(out.contains("does not exist"), "{out}");
    let a = with(&["import", "nexus_route.r", "tf-route"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    tf.expect(&dir, &a, 0);

    // An incompatible schema fails at plan time with the registry's reason.
    let incompatible = r#"definition={"type":"object","properties":{"id":{"type":"integer"}},"required":["id"],"additionalProperties":false}"#;
    let out = call(&["plan", "-var", incompatible], 1);
    assert!(
        out.contains("is incompatible with its registered versions (BACKWARD mode)"),
        "{out}"
    );
    assert!(
        out.contains("/properties/id") && out.contains("(version 1)"),
        "{out}"
    );

    // terraform test: the provider's own test file (other names, its own state).
    let out = call(&["test"], 0);
    assert!(out.contains("4 passed, 0 failed"), "{out}");

    // Destroy removes everything from the control plane.
    let out = call(&["destroy", "-auto-approve"], 0);
    assert!(
        out.contains("Destroy complete! Resources: 7 destroyed"),
        "{out}"
    );
    let routes = nexusctl(&ctl, &cp_url, &key_file, &["routes", "list"]);
    assert!(!routes.contains("tf-route"), "{routes}");
    let topology = nexusctl(&ctl, &cp_url, &key_file, &["topology"]);
    assert!(
        !topology.contains("tf-a") && !topology.contains("tf-b"),
        "{topology}"
    );
    let keys = nexusctl(&ctl, &cp_url, &key_file, &["keys", "list"]);
    let key_line = keys
        .lines()
        .find(|l| l.contains(key_id.trim()))
        .unwrap_or_default();
    assert!(key_line.contains("revoked"), "{keys}");
}

#[test]
fn modules_pass_their_terraform_tests() {
    if skip_without_terraform() {
        return;
    }
    let tmp = TempDir::new("modules");
    let tf = setup(&tmp.0);
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for (module, runs) in [("region", 8), ("control-plane", 4)] {
        let dir = tmp.0.join(module);
        copy_tree(&root.join("modules").join(module), &dir);
        tf.expect(&dir, &["init", "-backend=false"], 0);
        tf.expect(&dir, &["validate"], 0);
        let out = tf.expect(&dir, &["test"], 0);
        assert!(
            out.contains(&format!("{runs} passed, 0 failed")),
            "{module}: {out}"
        );
    }
}

/// The region module's config files are what `nexus gateway --config` takes: rendered by
/// Terraform and checked by `nexus config check`, with and without certificates and TLS.
#[test]
fn region_module_config_files_pass_nexus_config_check() {
    if skip_without_terraform() {
        return;
    }
    let (nexus, _) = nexus_bins();
    let tmp = TempDir::new("region-config");
    let tf = setup(&tmp.0);
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    copy_tree(&root.join("modules/region"), &tmp.0.join("region"));
    let dir = tmp.0.join("root");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("main.tf"),
        r#"
module "tls" {
  source            = "../region"
  region            = "eu-west"
  control_plane_url = "https://10.0.0.9:7400"
  ca_cert_pem       = "CA"
  gateways          = [{ id = "gw-1", host = "10.0.1.10" }, { id = "gw-2", host = "10.0.1.11" }]
  certificates      = { "gw-1" = { cert_pem = "C1", key_pem = "K1" }, "gw-2" = { cert_pem = "C2", key_pem = "K2" } }
}
module "plain" {
  source            = "../region"
  region            = "dev"
  control_plane_url = "http://127.0.0.1:7400"
  gateways          = [{ id = "dev-1", host = "127.0.0.1", listen_host = "127.0.0.1" }]
}
output "configs" {
  value = merge(
    { for id, g in module.tls.gateways : id => g.config_file },
    { for id, g in module.plain.gateways : id => g.config_file },
  )
}
"#,
    )
    .unwrap();
    tf.expect(&dir, &["init", "-backend=false"], 0);
    tf.expect(&dir, &["apply", "-auto-approve"], 0);
    let out = tf.run(&dir, &["output", "-json", "configs"]);
    let configs: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("configs as JSON");
    assert_eq!(configs.len(), 3, "{configs:?}");
    for (id, toml) in &configs {
        let file = tmp.0.join(format!("{id}.toml"));
        std::fs::write(&file, toml).unwrap();
        let check = Command::new(&nexus)
            .args(["config", "check"])
            .arg(&file)
            .output()
            .expect("run nexus config check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(
            check.status.success(),
            "nexus config check refused the {id} file:\n{toml}\n{text}"
        );
        assert!(
            text.contains(&format!("gateway_id = \"{id}\"")),
            "{id}: {text}"
        );
    }
}

#[test]
fn local_example_brings_up_three_regions_and_destroys_them() {
    if skip_without_terraform() {
        return;
    }
    let (nexus, ctl) = nexus_bins();
    let tmp = TempDir::new("example");
    let tf = setup(&tmp.0);
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    copy_tree(root, &tmp.0.join("terraform"));
    let dir = tmp.0.join("terraform/examples/local");
    let base = free_block(50);
    let vars = [
        "-var".to_owned(),
        format!("nexus_bin={}", nexus.display()),
        "-var".to_owned(),
        format!("base_port={base}"),
    ];
    let call = |args: &[&str], code: i32| {
        let a: Vec<String> = args
            .iter()
            .map(|s| s.to_string())
            .chain(vars.iter().cloned())
            .collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        tf.expect(&dir, &a, code)
    };
    // Destroys (and so stops the processes) even when an assertion below fails.
    struct Destroy<'a>(&'a dyn Fn());
    impl Drop for Destroy<'_> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let cleanup = || {
        let a: Vec<String> = ["destroy", "-auto-approve"]
            .iter()
            .map(|s| s.to_string())
            .chain(vars.iter().cloned())
            .collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let _ = tf.run(&dir, &a);
    };
    let guard = Destroy(&cleanup);

    tf.expect(&dir, &["init"], 0);
    let out = call(&["apply", "-auto-approve"], 0);
    assert!(out.contains("Apply complete! Resources: 22 added"), "{out}");
    call(&["plan", "-detailed-exitcode"], 0);

    let cp = format!("http://127.0.0.1:{base}");
    let key_file = dir.join(".run/cp/admin.key");
    wait_for(
        "six gateways in the topology",
        Duration::from_secs(30),
        || {
            let t = nexusctl(&ctl, &cp, &key_file, &["topology"]);
            ["eu-west", "us-east", "ap-south"]
                .iter()
                .all(|r| t.contains(&format!("region {r}: 2 gateway(s)")))
        },
    );

    // A message crosses regions: subscribed in eu-west, published in ap-south.
    let key = tf.expect(&dir, &["output", "-raw", "app_key"], 0);
    let (eu, ap) = (
        format!("http://127.0.0.1:{}", base + 10),
        format!("http://127.0.0.1:{}", base + 30),
    );
    let mut sub = Proc(
        Command::new(&ctl)
            .args(["sub", "--gateway", &eu, "--count", "1", "demo.>"])
            .env("NEXUS_API_KEY", key.trim())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let (stdout, stderr) = (sub.0.stdout.take().unwrap(), sub.0.stderr.take().unwrap());
    let (txo, txe) = (tx.clone(), tx);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = txo.send(line);
        }
    });
    // nexusctl sub says on stderr when its subscription is in place.
    let (serr_tx, serr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = serr_tx.send(line);
        }
        drop(txe);
    });
    let started = serr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("sub started");
    assert!(started.contains("listening"), "{started}");
    let end = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let _ = Command::new(&ctl)
            .args(["pub", "--gateway", &ap, "demo.hello", "across regions"])
            .env("NEXUS_API_KEY", key.trim())
            .output()
            .unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            Instant::now() < end,
            "no message reached eu-west from ap-south"
        );
    };
    assert!(got.contains("across regions"), "{got}");
    drop(sub);

    let pids: Vec<String> = std::fs::read_dir(dir.join(".run"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().trim().to_owned())
        .collect();
    assert_eq!(pids.len(), 7, "a control plane and six gateways");

    let out = call(&["destroy", "-auto-approve"], 0);
    assert!(
        out.contains("Destroy complete! Resources: 22 destroyed"),
        "{out}"
    );
    std::mem::forget(guard);
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs after destroy"
        );
    }
    for p in base..base + 50 {
        assert!(
            TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "TCP port {p} still in use after destroy"
        );
    }
    assert!(
        !dir.join(".run").exists(),
        "destroy leaves the work directory behind"
    );
}

#[test]
fn certificates_from_nexus_certs_import_without_changes() {
    if skip_without_terraform() {
        return;
    }
    let (nexus, _) = nexus_bins();
    let tmp = TempDir::new("certs");
    let tf = setup(&tmp.0);
    let certs = tmp.0.join("certs");
    let status = Command::new(&nexus)
        .args(["certs", "--gateway", "eu-west/gw-9"])
        .arg("--out")
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "nexus certs failed");
    let dir = tmp.0.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("main.tf"),
        r#"terraform {
  required_providers {
    nexus = { source = "nexus/nexus" }
  }
}
resource "nexus_ca" "imported" {}
resource "nexus_gateway_certificate" "imported" {
  ca_cert_pem = nexus_ca.imported.cert_pem
  ca_key_pem  = nexus_ca.imported.key_pem
  region      = "eu-west"
  gateway_id  = "gw-9"
}
"#,
    )
    .unwrap();
    tf.expect(&dir, &["init"], 0);
    // A directory without a CA is refused by name.
    let out = tf.expect(&dir, &["import", "nexus_ca.imported", "/nonexistent"], 1);
    assert!(out.contains("/nonexistent/ca.pem"), "{out}");
    let out = tf.expect(
        &dir,
        &["import", "nexus_ca.imported", certs.to_str().unwrap()],
        0,
    );
    assert!(out.contains("Import successful"), "{out}");
    let id = format!("{}:eu-west/gw-9", certs.display());
    tf.expect(
        &dir,
        &["import", "nexus_gateway_certificate.imported", &id],
        0,
    );
    // The imported PEMs are what `nexus certs` wrote, and the plan keeps them.
    tf.expect(&dir, &["plan", "-detailed-exitcode"], 0);
    let state = tf.expect(&dir, &["state", "show", "nexus_ca.imported"], 0);
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let first_line = ca.lines().nth(1).unwrap();
    assert!(state.contains(first_line), "{state}");
    assert!(
        state.contains("id  ") && state.contains("sha256:"),
        "{state}"
    );
}
