//! The bodies of the pages' server functions: each reads the caller's session (put in the
//! request by the access middleware), asks the Admin API with the session's key and the
//! monitor's latest snapshot, and returns the page's data. Reading a page also takes its
//! one-time flash message.

use leptos::prelude::*;
use nexus_proto::v1::*;

use super::AppState;
use super::admin::{Admin, key_row, route_row, subject_row};
use super::session::SessionId;
use super::time::{fmt_ms, now_ms};
use crate::model::*;

/// The app state and the caller's session id.
async fn context() -> Result<(AppState, String), ServerFnError> {
    let state = use_context::<AppState>()
        .ok_or_else(|| ServerFnError::new("console state missing from the request context"))?;
    let axum::Extension(SessionId(id)) = leptos_axum::extract::<axum::Extension<SessionId>>()
        .await
        .map_err(|_| ServerFnError::new("not logged in"))?;
    Ok((state, id))
}

/// An Admin API client carrying the session's key.
fn admin(state: &AppState, id: &str) -> Result<Admin, ServerFnError> {
    let key = state
        .sessions
        .with(id, |s| s.admin_key.clone())
        .ok_or_else(|| ServerFnError::new("the session has ended; log in again"))?;
    state
        .admin
        .client(key.as_deref())
        .map_err(|s| ServerFnError::new(s.message()))
}

fn status_error(s: tonic::Status) -> ServerFnError {
    ServerFnError::new(format!("control plane: {}", s.message()))
}

/// (csrf, flash) of the session; the flash is taken.
fn csrf_and_flash(state: &AppState, id: &str) -> (String, Option<Flash>) {
    state
        .sessions
        .with(id, |s| (s.csrf.clone(), s.flash.take()))
        .unwrap_or_default()
}

pub async fn session_info() -> Result<SessionInfo, ServerFnError> {
    let Ok((state, id)) = context().await else {
        return Ok(SessionInfo {
            logged_in: false,
            csrf: String::new(),
            open_control_plane: false,
            key_id: None,
        });
    };
    Ok(state
        .sessions
        .with(&id, |s| SessionInfo {
            logged_in: true,
            csrf: s.csrf.clone(),
            open_control_plane: s.open_control_plane,
            key_id: s.key_id.clone(),
        })
        .unwrap_or(SessionInfo {
            logged_in: false,
            csrf: String::new(),
            open_control_plane: false,
            key_id: None,
        }))
}

pub async fn topology() -> Result<TopologyView, ServerFnError> {
    let (state, _) = context().await?;
    Ok(state.monitor.latest().await.view.clone())
}

pub async fn region(name: String) -> Result<RegionDetail, ServerFnError> {
    let (state, _) = context().await?;
    let snapshot = state.monitor.latest().await;
    let region = snapshot
        .view
        .regions
        .iter()
        .find(|r| r.name == name)
        .cloned()
        .ok_or_else(|| ServerFnError::new(format!("region {name:?} is not known")))?;
    let links = snapshot
        .view
        .links
        .iter()
        .filter(|l| l.a == name || l.b == name)
        .cloned()
        .collect();
    let statuses = region
        .gateways
        .iter()
        .map(|g| (g.id.clone(), snapshot.statuses.get(&g.id).cloned()))
        .collect();
    Ok(RegionDetail {
        region,
        links,
        statuses,
    })
}

pub async fn routes() -> Result<RoutesPage, ServerFnError> {
    let (state, id) = context().await?;
    let mut c = admin(&state, &id)?;
    let listed = c
        .list_routes(ListRoutesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let regions = c
        .list_regions(ListRegionsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .regions
        .into_iter()
        .map(|r| r.name)
        .collect();
    let snapshot = state.monitor.latest().await;
    let routes = listed
        .routes
        .iter()
        .map(|r| {
            let mut row = route_row(r);
            let measured: Vec<&RouteStatus> = snapshot
                .statuses
                .values()
                .flat_map(|s| s.routes.iter())
                .filter(|m| m.route == r.name)
                .collect();
            row.reporting_gateways = measured.len();
            row.replication_lag_ms = measured
                .iter()
                .filter_map(|m| m.replication_lag_ms)
                .max_by(|a, b| a.total_cmp(b));
            row.spool_depth =
                (!measured.is_empty()).then(|| measured.iter().map(|m| m.spool_depth).sum());
            row
        })
        .collect();
    let (csrf, flash) = csrf_and_flash(&state, &id);
    Ok(RoutesPage {
        routes,
        regions,
        csrf,
        flash,
    })
}

pub async fn schemas() -> Result<SchemasPage, ServerFnError> {
    let (state, id) = context().await?;
    let listed = admin(&state, &id)?
        .list_schemas(ListSchemasRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(SchemasPage {
        subjects: listed.subjects.iter().map(subject_row).collect(),
        default_compatibility: super::admin::compatibility_name(listed.default_compatibility),
    })
}

/// At most this many versions (the latest ones) are loaded for a subject page.
const MAX_VERSIONS: usize = 50;

pub async fn schema(subject: String) -> Result<SchemaSubjectPage, ServerFnError> {
    let (state, id) = context().await?;
    let mut c = admin(&state, &id)?;
    let listed = c
        .list_schemas(ListSchemasRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let row = listed
        .subjects
        .iter()
        .find(|s| s.subject == subject)
        .map(subject_row)
        .ok_or_else(|| ServerFnError::new(format!("no schema is registered for {subject:?}")))?;
    let mut versions = Vec::new();
    for v in row.versions.iter().rev().take(MAX_VERSIONS).rev() {
        let sv = c
            .get_schema(GetSchemaRequest {
                subject: subject.clone(),
                version: *v,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let text = if sv.format == SchemaFormat::JsonSchema as i32 {
            serde_json::from_slice::<serde_json::Value>(&sv.definition)
                .ok()
                .and_then(|j| serde_json::to_string_pretty(&j).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(&sv.definition).into_owned())
        } else {
            format!(
                "FileDescriptorSet of {} bytes, message {}",
                sv.definition.len(),
                sv.message
            )
        };
        versions.push(SchemaVersionView {
            version: sv.version,
            format: super::admin::format_name(sv.format).to_owned(),
            message: sv.message,
            created: fmt_ms(sv.created_at_ms),
            text,
        });
    }
    let (csrf, flash) = csrf_and_flash(&state, &id);
    Ok(SchemaSubjectPage {
        subject: row,
        versions,
        csrf,
        flash,
    })
}

pub async fn keys() -> Result<KeysPage, ServerFnError> {
    let (state, id) = context().await?;
    let listed = admin(&state, &id)?
        .list_keys(ListKeysRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let now = now_ms();
    let (csrf, flash, pending) = state
        .sessions
        .with(&id, |s| (s.csrf.clone(), s.flash.take(), s.pending.clone()))
        .unwrap_or_default();
    Ok(KeysPage {
        keys: listed.keys.iter().map(|k| key_row(k, now)).collect(),
        csrf,
        flash,
        pending,
    })
}

/// One message's hops across every gateway (`id`), or the recent traced messages on a
/// subject pattern, from the control plane's `GetTrace`.
pub async fn trace(
    id: String,
    subject: String,
    since: String,
    until: String,
) -> Result<TracePage, ServerFnError> {
    let (state, sid) = context().await?;
    let (id, subject) = (id.trim().to_owned(), subject.trim().to_owned());
    let (since, until) = (since.trim().to_owned(), until.trim().to_owned());
    let snapshot = state.monitor.latest().await;
    let map = snapshot
        .view
        .regions
        .iter()
        .map(|r| TraceMapRegion {
            name: r.name.clone(),
            health: r.health,
            gateways: r.gateways.iter().map(|g| g.id.clone()).collect(),
        })
        .collect();
    let map_links = snapshot
        .view
        .links
        .iter()
        .map(|l| (l.a.clone(), l.b.clone(), l.health))
        .collect();
    let now = now_ms();
    let window = super::trace_window::window(&since, &until, now);
    let mut page = TracePage {
        id: id.clone(),
        subject: subject.clone(),
        rows: Vec::new(),
        gateways_asked: 0,
        unreachable: Vec::new(),
        sample_rates: Vec::new(),
        since,
        until,
        window: match &window {
            Ok(w) => super::trace_window::describe(*w),
            Err(e) => format!("time window {e}"),
        },
        map,
        map_links,
    };
    let Ok((since_ms, until_ms)) = window else {
        return Ok(page);
    };
    if id.is_empty() && subject.is_empty() && since_ms == 0 && until_ms == 0 {
        return Ok(page);
    }
    let searching = id.is_empty();
    let got = admin(&state, &sid)?
        .get_trace(GetTraceRequest {
            message_id: id.clone(),
            subject: if searching {
                subject.clone()
            } else {
                String::new()
            },
            since_ms: if searching { since_ms } else { 0 },
            until_ms: if searching { until_ms } else { 0 },
            limit: 200,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let first = got.records.first().map_or(0, |r| r.at_us);
    let rows = got
        .records
        .iter()
        .map(|r| TraceRow {
            message_id: r.message_id.clone(),
            offset_ms: (r.at_us - first) as f64 / 1e3,
            at: fmt_ms(r.at_us / 1000),
            region: r.region.clone(),
            gateway_id: r.gateway_id.clone(),
            event: r.event.clone(),
            reason: r.reason.clone(),
            subject: r.subject.clone(),
            peer: r.peer.clone(),
            detail: r.detail.clone(),
            latency_us: r.latency_us,
        })
        .collect();
    page.rows = rows;
    page.gateways_asked = got.gateways_asked;
    page.unreachable = got
        .unreachable
        .iter()
        .map(|u| format!("{}/{}: {}", u.region, u.gateway_id, u.error))
        .collect();
    page.sample_rates = got.sample_rates;
    Ok(page)
}

pub async fn live() -> Result<LivePage, ServerFnError> {
    let (state, sid) = context().await?;
    Ok(super::live::logs_backlog(admin(&state, &sid)?).await)
}
