//! Child processes of the real binaries for tests with their own harness (TLS control
//! planes and gateways started by hand): killed when dropped, with a temporary directory and
//! the address each prints when it is ready.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory `nexus-<tag>-<pid>` under the system's temporary directory.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nexus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn join(&self, p: &str) -> String {
        self.0.join(p).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `nexus <args>` and returns it with the first address printed after `marker`.
pub fn start(args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexus");
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "nexus {args:?} exited before printing {marker:?}: {seen}"
        );
        seen.push_str(&line);
        if let Some(rest) = line.split(marker).nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(',')
                .to_owned();
        }
    };
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = lines.read_to_end(&mut sink);
    });
    (Proc(child), addr)
}
