//! Login sessions and the access rules.
//!
//! A session is created by a successful login (`actions::login`) and lives only in this
//! process's memory: the admin key it was opened with, a CSRF token, a one-time flash message
//! and a key action awaiting confirmation. The browser holds just the session id, in a cookie
//! that is `HttpOnly` (scripts cannot read it) and `SameSite=Strict` (never sent on requests
//! started by other sites). Sessions end at logout or after [`IDLE_TIMEOUT`] unused.
//!
//! [`access`] runs before every handler: POSTs must come from this origin (when the browser
//! says where they come from), and everything but the login page, the stylesheet and the
//! browser bundle needs a session. Form actions additionally check the CSRF token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use parking_lot::Mutex;
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::model::{Flash, PendingKeyAction};

/// The session cookie's name.
pub const COOKIE: &str = "nexus_console_session";

/// A session unused for this long is forgotten.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

pub struct Session {
    /// The admin key sent to the control plane on this session's behalf (None: the Admin API
    /// is open and none was given).
    pub admin_key: Option<String>,
    /// The key's id (the `<id>` of `nxk_<id>_<secret>`), for display.
    pub key_id: Option<String>,
    /// The control plane answered without a key at login.
    pub open_control_plane: bool,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub pending: Option<PendingKeyAction>,
    last_seen: Instant,
}

/// The current request's session id, put in the request's extensions by [`access`].
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// Login sessions open (for `/metrics`).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a session; returns its id.
    pub fn create(&self, admin_key: Option<String>, open_control_plane: bool) -> String {
        let id = random_token();
        let key_id = admin_key.as_deref().and_then(key_id);
        self.map.lock().insert(
            id.clone(),
            Session {
                admin_key,
                key_id,
                open_control_plane,
                csrf: random_token(),
                flash: None,
                pending: None,
                last_seen: Instant::now(),
            },
        );
        id
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// Whether the session exists (and marks it used).
    fn touch(&self, id: &str) -> bool {
        match self.map.lock().get_mut(id) {
            Some(s) if s.last_seen.elapsed() < IDLE_TIMEOUT => {
                s.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Runs `f` on the session, if it still exists.
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.map.lock().get_mut(id).map(f)
    }

    fn sweep(&self) {
        self.map
            .lock()
            .retain(|_, s| s.last_seen.elapsed() < IDLE_TIMEOUT);
    }
}

/// Forgets idle sessions every minute until `stop`.
pub async fn sweep(sessions: Arc<Sessions>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => sessions.sweep(),
        }
    }
}

/// The id part of an `nxk_<id>_<secret>` token.
fn key_id(token: &str) -> Option<String> {
    let rest = token.strip_prefix("nxk_")?;
    let (id, _) = rest.split_once('_')?;
    Some(id.to_owned())
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session id from the request's cookies.
pub fn cookie_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// Whether a POST comes from a page of this console. Browsers send `Origin` on every POST
/// (and `Referer` in most cases); a request carrying neither is not a browser's cross-site
/// request, and the CSRF token still guards the actions.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin_host = |v: &str| {
        v.split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or("").to_owned())
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()) {
        return origin_host(origin).as_deref() == Some(host);
    }
    if let Some(referer) = headers.get(header::REFERER).and_then(|h| h.to_str().ok()) {
        return origin_host(referer).as_deref() == Some(host);
    }
    true
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/actions/login" | "/console.css" | "/favicon.ico"
    ) || path.starts_with("/pkg/")
}

/// The access middleware (see the module documentation).
pub async fn access(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let path = req.uri().path().to_owned();
    if let Some(id) = cookie_session(req.headers())
        && state.sessions.touch(&id)
    {
        req.extensions_mut().insert(SessionId(id));
        let mut resp = next.run(req).await;
        // Pages may carry a new key's secret or a CSRF token: keep them out of caches and
        // the back-forward history.
        if !is_public(&path) {
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
        }
        return resp;
    }
    if is_public(&path) {
        return next.run(req).await;
    }
    if path.starts_with("/api/") || path.starts_with("/events/") || path.starts_with("/actions/") {
        return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
    }
    Redirect::to("/login").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=1; {COOKIE}=abc; b=2").parse().unwrap(),
        );
        assert_eq!(cookie_session(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn refuses_posts_from_other_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7490".parse().unwrap());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:7490".parse().unwrap());
        assert!(same_origin(&h));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert_eq!(key_id("nxk_0123_secret").as_deref(), Some("0123"));
    }
}
