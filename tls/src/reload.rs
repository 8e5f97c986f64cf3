//! A server configuration that follows its files. A task polls the certificate, key and
//! client-CA files (modification time and length) and, when one changed, builds a new
//! configuration; the next handshake uses it. Established connections keep the keys they
//! negotiated, so live sessions survive a rotation. A half-written pair (the certificate
//! replaced, the key not yet) fails to build: the old configuration stays, a warning names
//! the problem once, and the next change is tried again.
//!
//! [`reload_all`] rebuilds every file-backed configuration of the process at once: the
//! binaries call it on SIGHUP, for operators who rotate certificates and want them in use
//! now rather than within a second.
//!
//! Polling rather than inotify: it works the same on every filesystem (including the
//! symlink swaps Kubernetes does for mounted secrets) and costs one `stat` per file a second.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::TlsError;
use crate::load::ServerTlsFiles;

/// How often the files are checked by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            // `metadata` follows symlinks, so a swapped link target counts as a change.
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Every file-backed configuration alive in this process, for [`reload_all`].
static LIVE: Mutex<Vec<Weak<ReloadingServerConfig>>> = Mutex::new(Vec::new());

/// Rebuilds every file-backed server configuration of this process from its files now (the
/// binaries do this on SIGHUP). Returns each one's certificate path and the outcome; a
/// configuration that fails to load keeps its previous certificate.
pub fn reload_all() -> Vec<(PathBuf, Result<(), TlsError>)> {
    let live: Vec<Arc<ReloadingServerConfig>> = {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    live.iter()
        .filter_map(|c| {
            let path = c.cert_path()?.to_path_buf();
            Some((path, c.reload()))
        })
        .collect()
}

/// The current TLS server configuration of a listener, rebuilt when its files change.
pub struct ReloadingServerConfig {
    files: Option<ServerTlsFiles>,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<rustls::ServerConfig>,
    reloads: AtomicU64,
}

impl ReloadingServerConfig {
    /// Loads `files` now (an error here stops start-up) for a server offering `alpn`.
    pub fn from_files(files: ServerTlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let config = files.build(alpn)?;
        let this = Arc::new(Self {
            files: Some(files),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            current: ArcSwap::from_pointee(config),
            reloads: AtomicU64::new(0),
        });
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&this));
        Ok(this)
    }

    /// The certificate file this configuration follows (`None` for a fixed one).
    pub fn cert_path(&self) -> Option<&std::path::Path> {
        self.files.as_ref().map(|f| f.cert.as_path())
    }

    /// A fixed configuration (made in memory, as `nexus dev` does); never reloads.
    pub fn fixed(config: rustls::ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            files: None,
            alpn: config.alpn_protocols.clone(),
            current: ArcSwap::from_pointee(config),
            reloads: AtomicU64::new(0),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// How many times the files were reloaded since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Rebuilds from the files now.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let config = files.build(&alpn)?;
        self.current.store(Arc::new(config));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the files every `interval` until `stop`, reloading on change.
    pub fn watch(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        let Some(files) = self.files.clone() else {
            return;
        };
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let paths = files.paths();
            let mut loaded = stamp(&paths);
            let mut failed: Option<Stamp> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(this) = this.upgrade() else { return };
                let now = stamp(&paths);
                if now == loaded || failed.as_ref() == Some(&now) {
                    continue;
                }
                match this.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                        loaded = now;
                        failed = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
                        failed = Some(now);
                    }
                }
            }
        });
    }
}
