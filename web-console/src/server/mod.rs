//! The console's server: an axum application serving the Leptos pages (rendered on the
//! server, hydrated when the site has the wasm), the server functions they load data with,
//! the CSRF-checked form actions, the topology event stream, and the browser bundle.
//!
//! Layout: [`session`] (login sessions, cookies, the access middleware), [`admin`] (the Admin
//! API client and the translation of its records), [`monitor`] (polls the control plane and
//! every gateway, computes rates and link health, pushes snapshots), [`api`] (the server
//! functions' bodies), [`actions`] (the forms' POST handlers), [`audit`] (the audit trail
//! page, rendered here as plain HTML), [`ops`] (`/healthz`, `/readyz`, `/metrics`).

pub mod actions;
pub mod admin;
pub mod api;
pub mod audit;
pub mod bundle;
pub mod live;
pub mod monitor;
pub mod ops;
pub mod session;
pub mod time;
pub mod trace_window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tokio_util::sync::CancellationToken;

use crate::app::{App, shell};

/// The name of the browser bundle: `pkg/nexus_console.js` and its wasm. scripts/build-console
/// runs wasm-bindgen with this `--out-name`.
pub const OUTPUT_NAME: &str = "nexus_console";

/// The stylesheet, compiled in so the console looks right even without a built site.
const CSS: &str = include_str!("../../style/console.css");

/// How `nexus console` (and `nexus dev`) run the console.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Where to serve HTTP.
    pub listen: SocketAddr,
    /// The control plane's Admin API (gRPC), `host:port` or a URL.
    pub control_plane: String,
    /// The console's own admin key, used for the background topology poll. Without it the
    /// poll uses the key of the most recent login (or none, when the Admin API is open).
    pub admin_key: Option<String>,
    /// A site built by `scripts/build-console SITE_DIR` (`pkg/nexus_console.js` and its wasm)
    /// to serve instead of the bundle compiled into the binary ([`bundle`]); `None` (the
    /// default) serves the compiled-in bundle.
    pub site_root: Option<PathBuf>,
    /// How often the control plane and the gateways are polled.
    pub poll_interval: Duration,
    /// Serve HTTPS with these files (reloaded when they change); the session cookie is then
    /// `Secure`.
    pub tls: Option<nexus_tls::ServerTlsFiles>,
    /// CA(s) of an https:// control plane (default: the system's roots).
    pub control_plane_ca: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address anyway (a warning at start).
    pub insecure: bool,
}

impl ConsoleOptions {
    pub fn new(
        listen: SocketAddr,
        control_plane: impl Into<String>,
        site_root: Option<PathBuf>,
    ) -> Self {
        Self {
            listen,
            control_plane: control_plane.into(),
            admin_key: None,
            site_root,
            poll_interval: Duration::from_secs(1),
            tls: None,
            control_plane_ca: None,
            insecure: false,
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub admin: admin::AdminConnector,
    pub sessions: Arc<session::Sessions>,
    pub monitor: Arc<monitor::Monitor>,
    /// Where `/pkg/` files come from: a built site, or the compiled-in bundle when `None`.
    pub site_root: Option<PathBuf>,
    pub shutdown: CancellationToken,
    /// Served over HTTPS: the session cookie carries `Secure`.
    pub https: bool,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(s: &AppState) -> Self {
        s.leptos_options.clone()
    }
}

/// The file name the hydration script asks for: wasm-bindgen's `<name>_bg.wasm`, unless
/// `LEPTOS_OUTPUT_NAME` was set when this was compiled (as cargo-leptos does), in which case
/// Leptos asks for `<name>.wasm`. scripts/build-console writes both.
pub fn wasm_file_name() -> String {
    if option_env!("LEPTOS_OUTPUT_NAME").is_none() {
        format!("{OUTPUT_NAME}_bg.wasm")
    } else {
        format!("{OUTPUT_NAME}.wasm")
    }
}

/// Whether `site_root` holds the browser bundle the pages will ask for.
pub fn site_has_wasm(site_root: &std::path::Path) -> bool {
    let pkg = site_root.join("pkg");
    pkg.join(format!("{OUTPUT_NAME}.js")).is_file() && pkg.join(wasm_file_name()).is_file()
}

/// A console bound to its address, not yet serving.
pub struct Console {
    listener: tokio::net::TcpListener,
    tls: Option<Arc<nexus_tls::ReloadingServerConfig>>,
    state: AppState,
    hydrate: bool,
    poll_interval: Duration,
}

impl Console {
    /// Binds the listener and prepares the Admin API client (connected lazily).
    pub async fn bind(opts: ConsoleOptions) -> anyhow::Result<Self> {
        let admin =
            admin::AdminConnector::new(&opts.control_plane, opts.control_plane_ca.as_deref())?;
        let tls = match &opts.tls {
            Some(files) => Some(nexus_tls::ReloadingServerConfig::from_files(
                files.clone(),
                &[b"http/1.1"],
            )?),
            None => {
                nexus_tls::check_plaintext("the console", opts.listen, opts.insecure)?;
                None
            }
        };
        let hydrate = opts.site_root.as_deref().is_none_or(site_has_wasm);
        if let (false, Some(site)) = (hydrate, &opts.site_root) {
            tracing::warn!(
                site = %site.display(),
                "the console site has no pkg/{OUTPUT_NAME}.js and pkg/{}: pages render on the server \
                 but will not hydrate (no live map, no click interactions); build it with scripts/build-console",
                wasm_file_name()
            );
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("cannot listen for the console on {}", opts.listen))?;
        let leptos_options = LeptosOptions::builder()
            .output_name(OUTPUT_NAME)
            .site_root(
                opts.site_root
                    .as_ref()
                    .map_or_else(|| ".".to_owned(), |s| s.display().to_string()),
            )
            .site_pkg_dir("pkg")
            .site_addr(listener.local_addr()?)
            .build();
        let monitor = Arc::new(monitor::Monitor::new(admin.clone(), opts.admin_key.clone()));
        Ok(Self {
            listener,
            state: AppState {
                https: tls.is_some(),
                leptos_options,
                admin,
                sessions: Arc::new(session::Sessions::default()),
                monitor,
                site_root: opts.site_root,
                shutdown: CancellationToken::new(),
            },
            tls,
            hydrate,
            poll_interval: opts.poll_interval,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Whether the console serves HTTPS.
    pub fn https(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the pages will hydrate (the site has the wasm).
    pub fn hydrates(&self) -> bool {
        self.hydrate
    }

    /// Serves until `shutdown` completes, then closes open event streams and returns.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Console {
            listener,
            tls,
            state,
            hydrate,
            poll_interval,
        } = self;
        let stop = state.shutdown.clone();
        let poller = tokio::spawn(
            state
                .monitor
                .clone()
                .run(poll_interval, state.shutdown.clone()),
        );
        let sweeper = tokio::spawn(session::sweep(state.sessions.clone(), stop.clone()));
        let app = router(state.clone(), hydrate);
        tracing::info!(addr = %listener.local_addr()?, hydrate, https = tls.is_some(), "console listening");
        let graceful = async move {
            shutdown.await;
            // Ends the event streams too, which would otherwise keep the shutdown waiting.
            stop.cancel();
        };
        match tls {
            Some(tls) => {
                tls.watch(
                    nexus_tls::reload::DEFAULT_RELOAD_INTERVAL,
                    state.shutdown.clone(),
                );
                let listener = nexus_tls::TlsListener::new(listener, tls, state.shutdown.clone())?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .await
                    .context("console server")?;
            }
            None => axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
                .context("console server")?,
        }
        state.shutdown.cancel();
        let _ = poller.await;
        let _ = sweeper.await;
        Ok(())
    }
}

/// Binds and serves the console until `shutdown` completes.
pub async fn serve(
    opts: ConsoleOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Console::bind(opts).await?.run(shutdown).await
}

fn router(state: AppState, hydrate: bool) -> Router {
    let routes = generate_route_list(App);
    let options = state.leptos_options.clone();
    Router::new()
        .leptos_routes(&state, routes, move || shell(options.clone(), hydrate))
        .route("/actions/login", post(actions::login))
        .route("/actions/logout", post(actions::logout))
        .route("/actions/routes/create", post(actions::create_route))
        .route("/actions/keys/create", post(actions::create_key))
        .route("/actions/keys/rotate", post(actions::rotate_key))
        .route("/actions/keys/revoke", post(actions::revoke_key))
        .route("/actions/keys/limits", post(actions::set_key_limits))
        .route("/actions/keys/binding", post(actions::set_key_binding))
        .route("/actions/keys/confirm", post(actions::confirm_key_action))
        .route("/actions/keys/cancel", post(actions::cancel_key_action))
        .route("/actions/schemas/check", post(actions::check_schema))
        .route("/audit", get(audit::page))
        .route("/events/topology", get(monitor::events))
        .route("/events/tail", get(live::tail))
        .route("/events/logs", get(live::logs))
        .route("/console.css", get(css))
        // No icon; an empty answer keeps browsers from logging a 404 on every page.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/pkg/{file}", get(pkg_file))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::access,
        ))
        // Probes and scrapes need no login: merged after the access layer.
        .merge(ops::routes())
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::response::Html(
            "<!DOCTYPE html><title>Not found</title><h1>Not found</h1><p><a href=\"/\">Back to the console</a></p>",
        ),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CSS,
    )
}

/// Serves the browser bundle from `<site>/pkg`: flat file names only.
async fn pkg_file(State(state): State<AppState>, Path(file): Path<String>) -> impl IntoResponse {
    let valid = !file.is_empty()
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let content_type = match file.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    if !valid {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let Some(site_root) = &state.site_root else {
        return match bundle::file(&file) {
            Some((bytes, content_type)) => (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                bytes,
            )
                .into_response(),
            None => (StatusCode::NOT_FOUND, "not found").into_response(),
        };
    };
    match tokio::fs::read(site_root.join("pkg").join(&file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_without_the_bundle_does_not_hydrate() {
        let dir = std::env::temp_dir().join(format!("nexus-console-site-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        assert!(!site_has_wasm(&dir));
        std::fs::write(dir.join("pkg").join(format!("{OUTPUT_NAME}.js")), "").unwrap();
        assert!(!site_has_wasm(&dir), "the js alone is not enough");
        std::fs::write(dir.join("pkg").join(wasm_file_name()), "").unwrap();
        assert!(site_has_wasm(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
