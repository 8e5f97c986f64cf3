//! The forms' POST handlers. Each checks the session's CSRF token, performs one Admin API
//! call (or, for keys, records the action to confirm), leaves the outcome in the session's
//! flash and redirects back to the page (post/redirect/get), so a reload never repeats an
//! action and no result, secret or not, travels in a URL.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use nexus_proto::v1::*;

use super::AppState;
use super::admin::{consistency_from, policy_from};
use super::session::{SessionId, clear_cookie, cookie_session, same_token, session_cookie};
use super::time::now_ms;
use crate::model::*;

type Fields = HashMap<String, String>;

fn field(f: &Fields, name: &str) -> String {
    f.get(name).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The session's admin key, if the form's CSRF token matches the session's.
fn checked(state: &AppState, id: &str, f: &Fields) -> Option<Option<String>> {
    let token = f.get("csrf").map(String::as_str).unwrap_or("");
    state
        .sessions
        .with(id, |s| {
            same_token(&s.csrf, token).then(|| s.admin_key.clone())
        })
        .flatten()
}

fn csrf_refused() -> Response {
    (
        axum::http::StatusCode::FORBIDDEN,
        "the form's CSRF token does not match this session; reload the page and try again\n",
    )
        .into_response()
}

fn flash(state: &AppState, id: &str, f: Flash) {
    state.sessions.with(id, |s| s.flash = Some(f));
}

// === login ===

/// Checks the key against the control plane and opens a session. A new session id is
/// issued on every login, so an id planted before login is worthless.
pub async fn login(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(f): Form<Fields>,
) -> Response {
    let key = Some(field(&f, "key")).filter(|k| !k.is_empty());
    // Does the control plane check keys at all? Ask without one.
    let open = match state.admin.client(None) {
        Ok(mut c) => c.list_keys(ListKeysRequest {}).await.is_ok(),
        Err(_) => false,
    };
    if !open {
        let Some(k) = key.as_deref() else {
            return Redirect::to("/login?error=empty").into_response();
        };
        let result = match state.admin.client(Some(k)) {
            Ok(mut c) => c.list_keys(ListKeysRequest {}).await.map(|_| ()),
            Err(s) => Err(s),
        };
        if let Err(s) = result {
            let code = match s.code() {
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => "unauthenticated",
                tonic::Code::PermissionDenied => "forbidden",
                _ => "unreachable",
            };
            return Redirect::to(&format!("/login?error={code}")).into_response();
        }
    }
    if let Some(old) = cookie_session(&headers) {
        state.sessions.remove(&old);
    }
    state.monitor.logged_in_with(key.clone());
    let id = state.sessions.create(key, open);
    tracing::info!(open, "console login");
    (
        [(header::SET_COOKIE, session_cookie(&id, state.https))],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    if checked(&state, &id, &f).is_none() {
        return csrf_refused();
    }
    state.sessions.remove(&id);
    (
        [(header::SET_COOKIE, clear_cookie(state.https))],
        Redirect::to("/login"),
    )
        .into_response()
}

// === routes ===

fn route_from(form: &RouteForm) -> Result<Route, String> {
    let policy =
        policy_from(&form.policy).ok_or_else(|| format!("unknown policy {:?}", form.policy))?;
    let consistency = consistency_from(&form.consistency)
        .ok_or_else(|| format!("unknown consistency {:?}", form.consistency))?;
    let mut weights = HashMap::new();
    for w in list(&form.weights) {
        let (region, weight) = w
            .split_once('=')
            .ok_or_else(|| format!("weight {w:?} is not region=weight"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight of {region} is not a whole number"))?;
        weights.insert(region.trim().to_owned(), weight);
    }
    let sync_quorum = if form.sync_quorum.is_empty() {
        0
    } else {
        form.sync_quorum
            .parse()
            .map_err(|_| "sync quorum is not a whole number".to_owned())?
    };
    Ok(Route {
        name: form.name.clone(),
        subjects: list(&form.subjects),
        policy: policy as i32,
        pinned_region: form.pinned_region.clone(),
        weights,
        failover: list(&form.failover),
        consistency: consistency as i32,
        sync_quorum,
        description: form.description.clone(),
        ..Default::default()
    })
}

/// Creates a route (it must not exist yet: `expected_version = -1`).
pub async fn create_route(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let form = RouteForm {
        name: field(&f, "name"),
        subjects: field(&f, "subjects"),
        policy: field(&f, "policy"),
        pinned_region: field(&f, "pinned_region"),
        weights: field(&f, "weights"),
        failover: field(&f, "failover"),
        consistency: field(&f, "consistency"),
        sync_quorum: field(&f, "sync_quorum"),
        description: field(&f, "description"),
    };
    let result = match route_from(&form) {
        Err(e) => Err(e),
        Ok(route) => match state.admin.client(key.as_deref()) {
            Err(s) => Err(s.message().to_owned()),
            Ok(mut c) => c
                .apply_route(ApplyRouteRequest {
                    route: Some(route),
                    expected_version: -1,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_owned()),
        },
    };
    flash(
        &state,
        &id,
        match result {
            Ok(r) => Flash::Notice(format!("Route {} created (version {}).", r.name, r.version)),
            Err(error) => Flash::RouteFormError { error, form },
        },
    );
    Redirect::to("/routes").into_response()
}

// === keys ===

fn pending(state: &AppState, id: &str, action: Option<PendingKeyAction>) {
    state.sessions.with(id, |s| s.pending = action);
}

/// The name of key `key_id`, for the confirmation text.
async fn key_name(
    state: &AppState,
    admin_key: Option<&str>,
    key_id: &str,
) -> Result<String, String> {
    if key_id.is_empty() {
        return Err("choose a key first".into());
    }
    let mut c = state
        .admin
        .client(admin_key)
        .map_err(|s| s.message().to_owned())?;
    let keys = c
        .list_keys(ListKeysRequest {})
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner()
        .keys;
    keys.into_iter()
        .find(|k| k.id == key_id)
        .map(|k| k.name)
        .ok_or_else(|| format!("key {key_id} not found"))
}

/// First step of creating a key: remember it and ask for confirmation.
pub async fn create_key(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    if checked(&state, &id, &f).is_none() {
        return csrf_refused();
    }
    let days = field(&f, "expires_in_days");
    let Ok(expires_in_days) = (if days.is_empty() {
        Ok(0)
    } else {
        days.parse::<u32>()
    }) else {
        flash(
            &state,
            &id,
            Flash::Error("expiry must be a whole number of days".into()),
        );
        return Redirect::to("/keys").into_response();
    };
    pending(
        &state,
        &id,
        Some(PendingKeyAction::Create {
            name: field(&f, "name"),
            publish: list(&field(&f, "publish")),
            subscribe: list(&field(&f, "subscribe")),
            admin: field(&f, "admin") == "yes",
            expires_in_days,
        }),
    );
    Redirect::to("/keys").into_response()
}

/// First step of rotating a key.
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let key_id = field(&f, "id");
    match key_name(&state, key.as_deref(), &key_id).await {
        Ok(name) => pending(
            &state,
            &id,
            Some(PendingKeyAction::Rotate {
                id: key_id,
                name,
                overlap_seconds: 3600,
            }),
        ),
        Err(e) => flash(&state, &id, Flash::Error(e)),
    }
    Redirect::to("/keys").into_response()
}

/// First step of revoking a key.
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let key_id = field(&f, "id");
    match key_name(&state, key.as_deref(), &key_id).await {
        Ok(name) => pending(
            &state,
            &id,
            Some(PendingKeyAction::Revoke { id: key_id, name }),
        ),
        Err(e) => flash(&state, &id, Flash::Error(e)),
    }
    Redirect::to("/keys").into_response()
}

/// A whole number from a limits field (empty: 0), or an error naming the field.
fn limit_field<T: std::str::FromStr>(f: &Fields, name: &str, what: &str) -> Result<T, String> {
    let v = field(f, name);
    let v = if v.is_empty() { "0" } else { v.as_str() };
    v.parse()
        .map_err(|_| format!("{what} must be a whole number (0 = unlimited), not {v:?}"))
}

/// The limits typed into the form, checked as the control plane will check them.
fn limits_from(f: &Fields) -> Result<KeyLimitsForm, String> {
    let l = KeyLimitsForm {
        msgs_per_sec: limit_field(f, "msgs_per_sec", "messages per second")?,
        burst_msgs: limit_field(f, "burst_msgs", "the message burst")?,
        bytes_per_sec: limit_field(f, "bytes_per_sec", "bytes per second")?,
        burst_bytes: limit_field(f, "burst_bytes", "the byte burst")?,
    };
    if l.burst_msgs != 0 && l.msgs_per_sec == 0 {
        return Err("a message burst needs a messages-per-second rate".into());
    }
    if l.burst_bytes != 0 && l.bytes_per_sec == 0 {
        return Err("a byte burst needs a bytes-per-second rate".into());
    }
    Ok(l)
}

/// The SHA-256 fingerprints (lower-case hex) of the PEM certificates pasted into the form.
fn pem_fingerprints(pem: &str) -> Result<Vec<String>, String> {
    use sha2::Digest;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(end) = body.find(END) else {
            return Err(format!("certificate {} has no {END} line", out.len() + 1));
        };
        let b64: String = body[..end].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("certificate {} is not valid base64: {e}", out.len() + 1))?;
        out.push(
            sha2::Sha256::digest(&der)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        rest = &body[end + END.len()..];
    }
    if out.is_empty() {
        return Err(format!(
            "the pasted text holds no PEM certificate ({BEGIN} ...)"
        ));
    }
    Ok(out)
}

/// First step of setting (or, with `clear`, lifting) a key's rate limits.
pub async fn set_key_limits(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let limits = if field(&f, "clear") == "yes" {
        Ok(KeyLimitsForm::default())
    } else {
        limits_from(&f)
    };
    let key_id = field(&f, "id");
    let outcome = match limits {
        Err(e) => Err(e),
        Ok(limits) => key_name(&state, key.as_deref(), &key_id).await.map(|name| {
            PendingKeyAction::SetLimits {
                id: key_id,
                name,
                limits,
            }
        }),
    };
    match outcome {
        Ok(action) => pending(&state, &id, Some(action)),
        Err(e) => flash(&state, &id, Flash::Error(e)),
    }
    Redirect::to("/keys").into_response()
}

/// First step of binding a key to client certificates (fingerprints, DNS names, pasted PEM
/// certificates), or, with `clear`, of lifting its binding.
pub async fn set_key_binding(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let binding = if field(&f, "clear") == "yes" {
        Ok((Vec::new(), Vec::new()))
    } else {
        let mut sha256 = list(&field(&f, "sha256"));
        let names = list(&field(&f, "names"));
        let pem = field(&f, "pem");
        let from_pem = if pem.is_empty() {
            Ok(Vec::new())
        } else {
            pem_fingerprints(&pem)
        };
        match from_pem {
            Err(e) => Err(e),
            Ok(more) => {
                sha256.extend(more);
                if sha256.is_empty() && names.is_empty() {
                    Err("give a fingerprint, a DNS name or a PEM certificate to bind the key to (or clear its binding)".into())
                } else {
                    Ok((sha256, names))
                }
            }
        }
    };
    let key_id = field(&f, "id");
    let outcome = match binding {
        Err(e) => Err(e),
        Ok((sha256, names)) => key_name(&state, key.as_deref(), &key_id).await.map(|name| {
            PendingKeyAction::SetBinding {
                id: key_id,
                name,
                sha256,
                names,
            }
        }),
    };
    match outcome {
        Ok(action) => pending(&state, &id, Some(action)),
        Err(e) => flash(&state, &id, Flash::Error(e)),
    }
    Redirect::to("/keys").into_response()
}

pub async fn cancel_key_action(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    if checked(&state, &id, &f).is_none() {
        return csrf_refused();
    }
    pending(&state, &id, None);
    flash(
        &state,
        &id,
        Flash::Notice("Cancelled; nothing was changed.".into()),
    );
    Redirect::to("/keys").into_response()
}

/// Second step: performs the action waiting for confirmation.
pub async fn confirm_key_action(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let Some(action) = state.sessions.with(&id, |s| s.pending.take()).flatten() else {
        flash(
            &state,
            &id,
            Flash::Error("Nothing is waiting for confirmation.".into()),
        );
        return Redirect::to("/keys").into_response();
    };
    let mut c = match state.admin.client(key.as_deref()) {
        Ok(c) => c,
        Err(s) => {
            flash(&state, &id, Flash::Error(s.message().to_owned()));
            return Redirect::to("/keys").into_response();
        }
    };
    let outcome = match action {
        PendingKeyAction::Create {
            name,
            publish,
            subscribe,
            admin,
            expires_in_days,
        } => c
            .create_key(CreateKeyRequest {
                name,
                scopes: Some(KeyScopes {
                    publish,
                    subscribe,
                    admin,
                }),
                expires_at_ms: if expires_in_days == 0 {
                    0
                } else {
                    now_ms() + i64::from(expires_in_days) * 86_400_000
                },
                // Bindings are set with `nexusctl keys create/bind --cert-*` (not in the console).
                cert_binding: None,
            })
            .await
            .map(|r| r.into_inner())
            .map(|r| {
                let k = r.key.unwrap_or_default();
                Flash::KeySecret {
                    id: k.id,
                    name: k.name,
                    secret: r.secret,
                }
            }),
        PendingKeyAction::Rotate {
            id: key_id,
            overlap_seconds,
            ..
        } => c
            .rotate_key(RotateKeyRequest {
                id: key_id,
                overlap_seconds,
            })
            .await
            .map(|r| r.into_inner())
            .map(|r| {
                let k = r.key.unwrap_or_default();
                Flash::KeySecret {
                    id: k.id,
                    name: k.name,
                    secret: r.secret,
                }
            }),
        PendingKeyAction::Revoke { id: key_id, name } => c
            .revoke_key(RevokeKeyRequest { id: key_id.clone() })
            .await
            .map(|_| Flash::Notice(format!("Key {name} ({key_id}) revoked."))),
        PendingKeyAction::SetLimits {
            id: key_id, limits, ..
        } => c
            .set_key_limits(SetKeyLimitsRequest {
                id: key_id,
                limits: Some(KeyLimits {
                    msgs_per_sec: limits.msgs_per_sec,
                    bytes_per_sec: limits.bytes_per_sec,
                    burst_msgs: limits.burst_msgs,
                    burst_bytes: limits.burst_bytes,
                }),
            })
            .await
            .map(|r| {
                let k = r.into_inner();
                let l = super::admin::key_row(&k, now_ms()).limits;
                Flash::Notice(format!(
                    "Key {} ({}) limits: {}.",
                    k.name,
                    k.id,
                    l.describe()
                ))
            }),
        PendingKeyAction::SetBinding {
            id: key_id,
            sha256,
            names,
            ..
        } => c
            .set_key_cert_binding(SetKeyCertBindingRequest {
                id: key_id,
                binding: (!sha256.is_empty() || !names.is_empty())
                    .then_some(KeyCertBinding { sha256, names }),
            })
            .await
            .map(|r| {
                let k = r.into_inner();
                let row = super::admin::key_row(&k, now_ms());
                Flash::Notice(format!(
                    "Key {} ({}) certificate binding: {}.",
                    k.name,
                    k.id,
                    describe_binding(&row.cert_sha256, &row.cert_names)
                ))
            }),
    };
    flash(
        &state,
        &id,
        outcome.unwrap_or_else(|s| Flash::Error(s.message().to_owned())),
    );
    Redirect::to("/keys").into_response()
}

// === schemas ===

/// Checks a pasted draft with `CheckSchema`; nothing is registered.
pub async fn check_schema(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Form(f): Form<Fields>,
) -> Response {
    let Some(key) = checked(&state, &id, &f) else {
        return csrf_refused();
    };
    let subject = field(&f, "subject");
    let format = field(&f, "format");
    let message = field(&f, "message");
    let draft = f.get("draft").cloned().unwrap_or_default();
    let definition = if format == "protobuf" {
        base64::engine::general_purpose::STANDARD
            .decode(draft.split_whitespace().collect::<String>())
            .map_err(|e| format!("a protobuf draft must be a base64 FileDescriptorSet: {e}"))
    } else {
        Ok(draft.clone().into_bytes())
    };
    let outcome = match definition {
        Err(e) => Err(e),
        Ok(definition) => match state.admin.client(key.as_deref()) {
            Err(s) => Err(s.message().to_owned()),
            Ok(mut c) => c
                .check_schema(CheckSchemaRequest {
                    subject: subject.clone(),
                    format: if format == "protobuf" {
                        SchemaFormat::Protobuf as i32
                    } else {
                        SchemaFormat::JsonSchema as i32
                    },
                    definition: definition.into(),
                    message: message.clone(),
                })
                .await
                .map(|r| r.into_inner())
                .map(|r| CheckOutcome {
                    compatible: r.compatible,
                    mode: super::admin::compatibility_name(r.mode),
                    incompatibilities: r
                        .incompatibilities
                        .into_iter()
                        .map(|i| (i.path, i.reason, i.version))
                        .collect(),
                })
                .map_err(|s| s.message().to_owned()),
        },
    };
    flash(
        &state,
        &id,
        Flash::SchemaCheck {
            subject: subject.clone(),
            format,
            message,
            draft,
            outcome,
        },
    );
    // Only a subject made of path-safe characters goes into the redirect.
    if !subject.is_empty()
        && subject
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Redirect::to(&format!("/schemas/{subject}")).into_response()
    } else {
        Redirect::to("/schemas").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_form_becomes_a_route() {
        let form = RouteForm {
            name: "orders".into(),
            subjects: "orders.>, audit.*".into(),
            policy: "weighted".into(),
            weights: "us-east=3, eu-west=1".into(),
            failover: "eu-west,us-east".into(),
            consistency: "sync".into(),
            sync_quorum: "2".into(),
            ..Default::default()
        };
        let r = route_from(&form).unwrap();
        assert_eq!(r.subjects, ["orders.>", "audit.*"]);
        assert_eq!(r.policy, RoutePolicy::Weighted as i32);
        assert_eq!(r.weights.get("us-east"), Some(&3));
        assert_eq!(r.failover, ["eu-west", "us-east"]);
        assert_eq!(
            (r.consistency, r.sync_quorum),
            (Consistency::Sync as i32, 2)
        );
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_form_is_checked_and_errors_name_the_field() {
        let l = limits_from(&fields(&[
            ("msgs_per_sec", "100"),
            ("burst_msgs", ""),
            ("bytes_per_sec", " 2048 "),
            ("burst_bytes", "4096"),
        ]))
        .unwrap();
        assert_eq!(
            l,
            KeyLimitsForm {
                msgs_per_sec: 100,
                burst_msgs: 0,
                bytes_per_sec: 2048,
                burst_bytes: 4096
            }
        );
        assert_eq!(limits_from(&fields(&[])).unwrap(), KeyLimitsForm::default());
        let err = limits_from(&fields(&[("bytes_per_sec", "-1")])).unwrap_err();
        assert!(
            err.contains("bytes per second") && err.contains("\"-1\""),
            "{err}"
        );
        let err = limits_from(&fields(&[("msgs_per_sec", "4294967296")])).unwrap_err();
        assert!(err.contains("messages per second"), "{err}");
        let err = limits_from(&fields(&[("burst_bytes", "10")])).unwrap_err();
        assert!(err.contains("bytes-per-second rate"), "{err}");
    }

    #[test]
    fn pasted_pem_certificates_give_their_sha256() {
        use sha2::Digest;
        let der = b"not really DER, but any bytes hash";
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let pem = format!(
            "junk before\n-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----\n",
            &b64[..20],
            &b64[20..]
        );
        let want: String = sha2::Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(pem_fingerprints(&pem).unwrap(), vec![want.clone()]);
        assert_eq!(
            pem_fingerprints(&format!("{pem}{pem}")).unwrap(),
            vec![want.clone(), want]
        );
        assert!(
            pem_fingerprints("hello")
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(
            pem_fingerprints("-----BEGIN CERTIFICATE-----\nAAAA")
                .unwrap_err()
                .contains("END CERTIFICATE")
        );
        assert!(
            pem_fingerprints("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----")
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn route_form_errors_name_the_field() {
        let bad = |f: RouteForm| route_from(&f).unwrap_err();
        let base = RouteForm {
            policy: "local_first".into(),
            consistency: "local".into(),
            ..Default::default()
        };
        assert!(
            bad(RouteForm {
                policy: "closest".into(),
                ..base.clone()
            })
            .contains("policy")
        );
        assert!(
            bad(RouteForm {
                weights: "a".into(),
                ..base.clone()
            })
            .contains("region=weight")
        );
        assert!(
            bad(RouteForm {
                sync_quorum: "x".into(),
                ..base
            })
            .contains("quorum")
        );
    }
}
