//! Part A of "secure by default" with the real binaries: `nexus certs` issues the PKI; a
//! `nexus control-plane` serves TLS with the cluster CA as client CA; `nexusctl` reaches it
//! over https with the bootstrap admin key from a file (never the command line) or with an
//! admin certificate, and is refused with neither; `nexus console` serves HTTPS with a
//! `Secure` session cookie (checked with curl against the CA); and a gateway or control plane
//! asked to serve plaintext on a non-loopback address refuses to start unless `--insecure`.

use std::path::Path;
use std::process::Command;

#[path = "common/procs.rs"]
mod procs;
use procs::{TempDir, start};

fn nexusctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args(args)
        .env_remove("NEXUS_ADMIN_KEY")
        .env_remove("NEXUS_ADMIN_KEY_FILE")
        .env_remove("NEXUS_CONTROL_PLANE")
        .output()
        .expect("run nexusctl")
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_control_plane_nexusctl_and_console_with_certificates_from_nexus_certs() {
    let d = TempDir::new("security-pki");
    let pki = d.join("pki");
    let certs = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["certs", "--out", &pki, "--control-plane", "127.0.0.1"])
        .args(["--console", "127.0.0.1", "--admin", "alice"])
        .output()
        .unwrap();
    assert!(certs.status.success(), "{certs:?}");
    let p = |f: &str| Path::new(&pki).join(f).display().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "private keys are readable only by their owner"
        );
    }

    let data = d.join("cp");
    let (_cp, cp_addr) = start(
        &[
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--tls-cert",
            &p("control-plane.pem"),
            "--tls-key",
            &p("control-plane-key.pem"),
            "--tls-client-ca",
            &p("ca.pem"),
        ],
        " listening on ",
    );
    let url = format!("https://{cp_addr}");
    let key_file = Path::new(&data).join("admin.key").display().to_string();
    let ca = p("ca.pem");

    let ok = nexusctl(&[
        "--control-plane",
        &url,
        "--ca",
        &ca,
        "--admin-key-file",
        &key_file,
        "keys",
        "list",
    ]);
    assert!(
        ok.status.success(),
        "admin key from a file over TLS: {ok:?}"
    );
    let ok = nexusctl(&[
        "--control-plane",
        &url,
        "--ca",
        &ca,
        "--tls-cert",
        &p("admin/alice.pem"),
        "--tls-key",
        &p("admin/alice-key.pem"),
        "keys",
        "list",
    ]);
    assert!(ok.status.success(), "an admin certificate: {ok:?}");
    // A change made with the certificate goes on the audit trail under its name, over TLS
    // (the peer address comes through the TLS listener).
    let (alice_cert, alice_key) = (p("admin/alice.pem"), p("admin/alice-key.pem"));
    let alice = |args: &[&str]| {
        let mut all = vec![
            "--control-plane",
            &url,
            "--ca",
            &ca,
            "--tls-cert",
            &alice_cert,
            "--tls-key",
            &alice_key,
        ];
        all.extend_from_slice(args);
        nexusctl(&all)
    };
    let created = alice(&["regions", "create", "tls-region"]);
    assert!(created.status.success(), "{created:?}");
    let trail = alice(&["audit", "--kind", "region", "-o", "json"]);
    assert!(trail.status.success(), "{trail:?}");
    let trail: serde_json::Value = serde_json::from_slice(&trail.stdout).unwrap();
    assert_eq!(trail[0]["actor_kind"], "certificate", "{trail}");
    assert_eq!(trail[0]["actor"], "alice");
    assert_eq!(trail[0]["target_name"], "tls-region");
    assert!(
        trail[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{trail}"
    );
    let refused = nexusctl(&["--control-plane", &url, "--ca", &ca, "keys", "list"]);
    assert!(!refused.status.success(), "no credential must be refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("admin key"),
        "{refused:?}"
    );
    let untrusted = nexusctl(&[
        "--control-plane",
        &url,
        "--admin-key-file",
        &key_file,
        "keys",
        "list",
    ]);
    assert!(
        !untrusted.status.success(),
        "the system roots do not know the cluster CA: {untrusted:?}"
    );

    let (_console, console_url) = start(
        &[
            "console",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            &url,
            "--control-plane-ca",
            &ca,
            "--tls-cert",
            &p("console.pem"),
            "--tls-key",
            &p("console-key.pem"),
            "--site",
            &d.join("no-site"),
        ],
        "nexus console on ",
    );
    assert!(console_url.starts_with("https://"), "{console_url}");
    let page = curl(&["--cacert", &ca, &format!("{console_url}/login")]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let login = curl(&[
        "--cacert",
        &ca,
        "--data-urlencode",
        &format!("key={}", key.trim()),
        &format!("{console_url}/actions/login"),
    ]);
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {login}"));
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    // Plain HTTP to the HTTPS port gets nothing usable.
    let plain = curl(&[&format!(
        "http://{}/login",
        console_url.trim_start_matches("https://")
    )]);
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
}

#[test]
fn plaintext_off_loopback_is_refused_unless_insecure() {
    let d = TempDir::new("security-plain");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "gateway",
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--auth", "off", "--state-dir", &d.join("state")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure") && err.contains("0.0.0.0"),
        "{err}"
    );

    let (_gw, addr) = start(
        &[
            "gateway",
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth",
            "off",
            "--state-dir",
            &d.join("state"),
            "--insecure",
        ],
        " listening on ",
    );
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");

    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "control-plane",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &d.join("cp"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--insecure"),
        "{out:?}"
    );
}
