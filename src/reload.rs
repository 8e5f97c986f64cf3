//! SIGHUP: reload what can be reloaded without a restart, and say what cannot.
//!
//! On SIGHUP every role re-reads its config file (with the flags and environment it was
//! started with still on top) and validates it; an invalid file changes nothing and is
//! logged with the reason. Certificates (every TLS listener of the process, and federation's
//! identity) are re-read at once, rather than within the second the file watcher takes.
//! A gateway applies the settings listed in [`GatewayConfig::LIVE_SETTINGS`] at once; every
//! other changed setting is logged by name as needing a restart. Logs go to stderr like all
//! others; a summary line ends each reload.

use std::future::Future;
use std::sync::Arc;

use nexus_gateway::GatewayConfig;
use serde::Serialize;

/// Runs `reload` on every SIGHUP until the process ends (Unix only; elsewhere nothing).
pub fn on_sighup<F, Fut>(reload: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by restarting");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading configuration and certificates");
            reload().await;
        }
    });
    #[cfg(not(unix))]
    drop(reload);
}

/// Re-reads every TLS listener's files now; returns how many reloaded.
pub fn reload_certificates() -> usize {
    let mut ok = 0;
    for (cert, result) in nexus_tls::reload::reload_all() {
        match result {
            Ok(()) => {
                ok += 1;
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(
                cert = %cert.display(),
                error = %e,
                "TLS files cannot be loaded; keeping the previous certificate"
            ),
        }
    }
    ok
}

/// The dotted names of the settings that differ between `old` and `new`.
pub fn changed_settings<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let flat = |v: &T| {
        let mut out = Vec::new();
        if let Ok(v) = toml::Value::try_from(v) {
            walk("", &v, &mut out);
        }
        out.into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Logs the settings that changed but need a restart.
pub fn report_restart_needed(section: &str, keys: &[String]) {
    for key in keys {
        tracing::warn!(
            setting = %format!("{section}.{key}"),
            "setting changed in the config file; it takes effect after a restart (the running value is kept)"
        );
    }
}

/// Logs the end of a reload.
pub fn summary(applied: usize, need_restart: usize, certificates: usize) {
    tracing::info!(applied, need_restart, certificates, "SIGHUP: reload done");
}

/// SIGHUP for a role whose settings all need a restart (control plane, console):
/// certificates are re-read, and `again` (the file read again with the start's flags on top;
/// `None` without a config file) is compared with `running` to name what changed.
pub fn on_sighup_report<T, F>(section: &'static str, running: T, again: Option<F>)
where
    T: Serialize + Send + Sync + 'static,
    F: Fn() -> anyhow::Result<T> + Send + Sync + 'static,
{
    on_sighup(move || {
        let keys = again
            .as_ref()
            .map(|f| f().map(|new| changed_settings(&running, &new)));
        async move {
            let certs = reload_certificates();
            let need_restart = match keys {
                None => 0,
                Some(Ok(keys)) => {
                    report_restart_needed(section, &keys);
                    keys.len()
                }
                Some(Err(e)) => {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "config reload failed; keeping the running settings"
                    );
                    0
                }
            };
            summary(0, need_restart, certs);
        }
    });
}

/// A gateway's reload: the file again (through `resolve`), its live settings applied to
/// `router`, federation's identity re-read.
pub struct GatewayReload {
    pub router: Arc<nexus_gateway::router::Router>,
    /// Reads the file again with the start's flags on top; `None` without a config file
    /// (then only certificates reload).
    #[allow(clippy::type_complexity)]
    pub resolve: Option<
        Box<
            dyn Fn() -> anyhow::Result<(GatewayConfig, crate::config_file::FederationSettings)>
                + Send
                + Sync,
        >,
    >,
    pub federation: Option<(
        Arc<nexus_federation::link::Federation>,
        crate::config_file::FederationSettings,
    )>,
}

impl GatewayReload {
    pub async fn run(&self) {
        let certificates = reload_certificates();
        let (mut applied, mut need_restart) = (0, 0);
        match self.resolve.as_ref().map(|resolve| resolve()) {
            None => tracing::info!("no config file (--config): only certificates reload"),
            Some(Err(e)) => tracing::error!(
                error = %format!("{e:#}"),
                "config reload failed; keeping the running settings"
            ),
            Some(Ok((new, new_fed))) => {
                match self.router.reload_config(&new) {
                    Ok(r) => {
                        for key in &r.applied {
                            tracing::info!(setting = %format!("gateway.{key}"), "setting applied");
                        }
                        report_restart_needed("gateway", &r.need_restart);
                        applied += r.applied.len();
                        need_restart += r.need_restart.len();
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "config reload failed; keeping the running settings"
                    ),
                }
                if let Some((_, running)) = &self.federation {
                    let keys = changed_settings(running, &new_fed);
                    report_restart_needed("federation", &keys);
                    need_restart += keys.len();
                }
            }
        }
        let mut certs = certificates;
        if let Some((fed, settings)) = &self.federation
            && let (Some(cert), Some(key), Some(ca)) = (&settings.cert, &settings.key, &settings.ca)
        {
            match nexus_federation::tls::Identity::from_pem_files(cert, key, ca)
                .map_err(anyhow::Error::from)
                .and_then(|id| fed.reload_identity(&id).map_err(anyhow::Error::from))
            {
                Ok(()) => {
                    certs += 1;
                    tracing::info!(cert = %cert.display(), "federation certificate reloaded");
                }
                Err(e) => tracing::warn!(
                    cert = %cert.display(),
                    error = %format!("{e:#}"),
                    "federation certificate cannot be loaded; keeping the previous one"
                ),
            }
        }
        summary(applied, need_restart, certs);
    }
}
