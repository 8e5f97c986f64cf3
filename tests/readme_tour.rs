//! The README's five-minute tour, run as written: the commands are read from README.md (the
//! `sh` blocks of "A five-minute tour"), not copied here, and run against `nexus dev` on its
//! documented ports. Each outcome the README claims in a command's comment ("accepted",
//! "refused: names the schema version and /id", "fails clearly: no responders", ...) and in
//! its prose (a message published in one region reaches subscribers in the others) is checked.
//!
//! The documented ports (7400, 7422, 7480, 7490, ...) may be taken on a shared machine, so the
//! test re-runs itself in a private network namespace (`unshare -rn`, loopback only) when it
//! can; otherwise it needs those ports free. The only change to a command is how nexusctl is
//! invoked: `cargo run [-q] --bin nexusctl --` and the tour's `nexusctl` alias run the binary
//! this test was built with (building it again inside a test would take minutes). The
//! examples (`cargo run -p nexus-client --example X`) run from the target directory when
//! they were built (`scripts/test` builds them first); otherwise they are reported skipped.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, tempdir};

const IN_NETNS: &str = "NEXUS_README_TOUR_IN_NETNS";

/// A command of the tour and the outcome its comment claims.
#[derive(Debug, Clone)]
struct Step {
    command: String,
    claim: String,
}

/// The commands of README.md's tour, in order, with their comments.
fn tour(readme: &str) -> Vec<Step> {
    let start = readme
        .find("## A five-minute tour")
        .expect("README.md has a \"A five-minute tour\" section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut steps = Vec::new();
    let mut in_sh = false;
    for line in section[..end].lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if !in_sh || t.is_empty() {
            continue;
        }
        let (command, claim) = match t.find(" #") {
            Some(i) => (t[..i].trim(), t[i + 2..].trim()),
            None => (t, ""),
        };
        steps.push(Step {
            command: command.to_owned(),
            claim: claim.to_owned(),
        });
    }
    steps
}

#[test]
fn the_tour_is_read_from_the_readme() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let steps = tour(&readme);
    assert!(
        steps
            .iter()
            .any(|s| s.command.starts_with("cargo run --release -- dev"))
    );
    assert!(
        steps
            .iter()
            .any(|s| s.command.contains("set-enforcement") && s.command.contains("reject")),
        "{steps:#?}"
    );
}

/// A process killed when dropped, with its whole process group when it leads one (a
/// background tour command: bash running `nexusctl` as its child, which killing bash alone
/// would leave running).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a command printed.
#[derive(Debug)]
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The tour's command line as bash runs it, nexusctl being the binary under test.
fn shell(command: &str, cwd: &Path) -> Command {
    let command = command
        .replace("cargo run -q --bin nexusctl --", "nexusctl")
        .replace("cargo run --bin nexusctl --", "nexusctl");
    let script = format!(
        "nexusctl() {{ \"{}\" \"$@\"; }}\n{command}",
        env!("CARGO_BIN_EXE_nexusctl")
    );
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env_remove("NEXUS_URL")
        .env_remove("NEXUS_CONTROL_PLANE")
        .env_remove("NEXUS_API_KEY")
        .env_remove("NEXUS_ADMIN_KEY")
        .env("RUST_LOG", "warn");
    c
}

fn run(command: &str, cwd: &Path) -> Ran {
    let out = shell(command, cwd).output().expect("bash");
    let ran = Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ {command}\n{}{}", ran.stdout, ran.stderr);
    ran
}

/// A background command (`... &`) and the file its stdout goes to.
struct Background {
    command: String,
    _proc: Proc,
    out: PathBuf,
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `region`'s interest in `subject` reached the gateway whose metrics are at `metrics`.
fn interest_known(metrics: &str, region: &str, subject: &str) -> bool {
    let Ok((200, body)) = http_get(
        metrics.parse().unwrap(),
        &format!("/v1/explain?subject={subject}"),
    ) else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["federation"]["regions"].as_array().is_some_and(|r| {
        r.iter()
            .any(|c| c["region"] == region && c["interest"] == true)
    })
}

/// The region of the gateway at `url` according to the dev banner.
fn region_of(banner: &str, url: &str) -> Option<String> {
    banner
        .lines()
        .find(|l| l.trim_start().starts_with("region ") && l.contains(&format!("adapters {url} ")))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
}

#[test]
fn readme_tour_works_as_written() {
    if std::env::var_os(IN_NETNS).is_none()
        && Command::new("unshare")
            .args(["-rn", "true"])
            .status()
            .is_ok_and(|s| s.success())
    {
        let status = Command::new("unshare")
            .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "readme_tour_works_as_written",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(IN_NETNS, "1")
            .status()
            .expect("unshare");
        assert!(status.success(), "the tour failed in its network namespace");
        return;
    }
    run_tour();
}

fn run_tour() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let steps = tour(&readme);
    let data = tempdir::Dir::new("tour-data");
    let cwd = tempdir::Dir::new("tour-cwd");

    // `cargo run --release -- dev`: the same command, from the binary under test, with a
    // fresh $XDG_DATA_HOME so its default state directory is empty.
    let dev_step = steps
        .iter()
        .find(|s| s.command.starts_with("cargo run --release -- dev"))
        .expect("the tour starts nexus dev");
    let dev_args: Vec<&str> = dev_step
        .command
        .trim_start_matches("cargo run --release --")
        .split_whitespace()
        .collect();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_nexus"));
    dev.args(&dev_args)
        .env("XDG_DATA_HOME", &data.0)
        .env("RUST_LOG", "warn")
        .env_remove("NEXUS_DEV_DIR")
        .env_remove("NEXUS_CONSOLE_SITE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = dev.spawn().expect("nexus dev");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _dev = Proc(child);
    let mut banner = String::new();
    let mut line = String::new();
    while !banner.contains("  console ") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "nexus dev exited:\n{banner}"
        );
        banner.push_str(&line);
    }
    eprintln!("{banner}");
    assert!(
        !banner.contains("not hydrated"),
        "the README promises a live map: {banner}"
    );
    // Keep draining stdout so nexus dev never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    let first_metrics = banner
        .lines()
        .find_map(|l| l.split("metrics http://").nth(1))
        .and_then(|r| r.split('/').next())
        .expect("metrics address on the banner")
        .to_owned();

    let mut background: Vec<Background> = Vec::new();
    let mut checked = Vec::new();
    for step in &steps {
        let c = step.command.as_str();
        if c.starts_with("cargo run --release -- dev") || c.starts_with("alias nexusctl=") {
            continue;
        }
        if let Some(name) = c
            .strip_prefix("cargo run -p nexus-client --example ")
            .map(str::trim)
        {
            let bin = Path::new(env!("CARGO_BIN_EXE_nexus"))
                .parent()
                .unwrap()
                .join("examples")
                .join(name);
            if !bin.is_file() {
                eprintln!("skipped (example not built): {c}");
                continue;
            }
            let ran = run(&bin.display().to_string(), &cwd.0);
            assert!(ran.ok, "{c} ({}) failed: {ran:?}", step.claim);
            checked.push(c.to_owned());
            continue;
        }
        if let Some(cmd) = c.strip_suffix('&').map(str::trim) {
            let out = cwd.0.join(format!("background-{}.out", background.len()));
            let err = cwd.0.join(format!("background-{}.err", background.len()));
            let proc = shell(cmd, &cwd.0)
                .process_group(0)
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .spawn()
                .expect("background command");
            let proc = Proc(proc);
            // A subscriber is ready once it says it listens.
            wait_for(
                &format!("`{cmd}` to subscribe"),
                Duration::from_secs(20),
                || std::fs::read_to_string(&err).is_ok_and(|e| e.contains("listening on")),
            );
            // And the first region knows of its interest (a person types the next command
            // seconds later; the test waits for the same thing explicitly).
            if let Some(url) = cmd
                .strip_prefix("NEXUS_URL=")
                .and_then(|r| r.split_whitespace().next())
            {
                let region = region_of(&banner, url).expect("NEXUS_URL is a dev gateway");
                wait_for(
                    &format!("{region}'s interest to reach the first region"),
                    Duration::from_secs(20),
                    || interest_known(&first_metrics, &region, "greetings.world"),
                );
            }
            background.push(Background {
                command: cmd.to_owned(),
                _proc: proc,
                out,
            });
            continue;
        }
        let ran = run(c, &cwd.0);
        let claim = step.claim.as_str();
        if claim.contains("refused") {
            assert!(!ran.ok, "README: `{c}` is {claim}; it succeeded: {ran:?}");
            if claim.contains("schema version") {
                assert!(ran.stderr.contains("version 1"), "{claim}: {ran:?}");
            }
            if claim.contains("/id") {
                assert!(ran.stderr.contains("/id"), "{claim}: {ran:?}");
            }
        } else if claim.contains("fails clearly") {
            assert!(!ran.ok, "README: `{c}` {claim}; it succeeded: {ran:?}");
            if claim.contains("no responders") {
                assert!(ran.stderr.contains("no responders"), "{claim}: {ran:?}");
            }
            assert_eq!(
                ran.stderr.lines().count(),
                1,
                "one clear line: {}",
                ran.stderr
            );
        } else {
            assert!(ran.ok, "README: `{c}` ({claim}) failed: {ran:?}");
            if claim.contains("three regions") {
                for region in ["us-east", "eu-west", "ap-south"] {
                    assert!(ran.stdout.contains(region), "{claim}: {}", ran.stdout);
                }
            }
            if claim.contains("prints the key once") {
                assert_eq!(ran.stdout.matches("nxk_").count(), 1, "{claim}: {ran:?}");
            }
            if c.starts_with("curl ") {
                assert!(!ran.stdout.trim().is_empty(), "no metrics matched: {c}");
            }
            if let Some(region) = claim.split("forwarded to ").nth(1) {
                let region = region.split_whitespace().next().unwrap_or_default();
                assert!(
                    ran.stdout.contains(&format!("forwarded to {region}")),
                    "{claim}: {}",
                    ran.stdout
                );
            }
            if claim.contains("every gateway applied") {
                assert!(
                    ran.stdout.contains("applied by 3 live gateway(s)"),
                    "{claim}: {}",
                    ran.stdout
                );
            }
        }
        checked.push(c.to_owned());
    }

    // The prose's claim: a message published in one region reaches subscribers in the others
    // (and the local subscriber started later sees the second one).
    for b in &background {
        wait_for(
            &format!("`{}` to print the greeting", b.command),
            Duration::from_secs(10),
            || std::fs::read_to_string(&b.out).is_ok_and(|o| o.contains("[greetings.world] hello")),
        );
    }
    assert!(
        checked.iter().any(|c| c.contains("set-enforcement")),
        "{checked:#?}"
    );
    eprintln!("checked {} tour commands", checked.len());
}
