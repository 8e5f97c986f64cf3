//! The live page's data: `GET /events/tail?subject=&rate=&sample=` relays the control
//! plane's `Tail` (messages on a subject pattern as every gateway taps them, payload
//! previews already redacted by the control plane) and `GET /events/logs` its
//! `FollowLogs` (every gateway's WARN/ERROR events, backlog then new ones), each as
//! server-sent events (JSON of [`TailItem`] and [`LogLine`]) with the session's admin key,
//! until the browser goes away. [`logs_backlog`] is the first render's copy of the backlog.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use nexus_proto::v1::{FollowLogsRequest, LogRecord, TailEvent, TailRequest};

use super::AppState;
use super::admin::Admin;
use super::session::SessionId;
use super::time::fmt_ms;
use crate::model::*;

fn client(state: &AppState, id: &str) -> Result<Admin, String> {
    let key = state
        .sessions
        .with(id, |s| s.admin_key.clone())
        .ok_or_else(|| "the session has ended; log in again".to_owned())?;
    state
        .admin
        .client(key.as_deref())
        .map_err(|s| s.message().to_owned())
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn time_us(at_us: i64) -> String {
    let ms = at_us / 1000;
    let t = fmt_ms(ms);
    match t.strip_suffix(" UTC") {
        Some(s) => format!("{s}.{:03} UTC", ms.rem_euclid(1000)),
        None => t,
    }
}

fn item(e: TailEvent) -> TailItem {
    if let Some(s) = e.stats {
        return TailItem::Stats(TailCounters {
            gateways: s.gateways,
            matched: s.matched,
            sent: s.sent,
            dropped_rate_limit: s.dropped_rate_limit,
            dropped_slow_viewer: s.dropped_slow_viewer,
            unreachable: s
                .unreachable
                .iter()
                .map(|u| format!("{}/{}: {}", u.region, u.gateway_id, u.error))
                .collect(),
        });
    }
    TailItem::Message(TailLine {
        at: time_us(e.at_us),
        message_id: e.message_id,
        subject: e.subject,
        region: e.region,
        gateway_id: e.gateway_id,
        kind: e.kind,
        payload_bytes: e.payload_bytes,
        header_keys: e.header_keys,
        preview: e.preview,
        preview_note: e.preview_note,
    })
}

pub fn log_line(r: LogRecord) -> LogLine {
    let mut fields: Vec<_> = r.fields.into_iter().collect();
    fields.sort();
    LogLine {
        at: time_us(r.at_us),
        at_us: r.at_us,
        region: r.region,
        gateway_id: r.gateway_id,
        level: r.level,
        target: r.target,
        message: r.message,
        fields: fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn sse<T: serde::Serialize>(v: &T) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::to_string(v).unwrap_or_else(|_| "null".into())))
}

#[derive(serde::Deserialize)]
pub struct TailQuery {
    subject: String,
    rate: Option<u32>,
    sample: Option<f64>,
}

/// `GET /events/tail`: the live tail of `subject`, as server-sent [`TailItem`]s.
pub async fn tail(
    State(state): State<AppState>,
    axum::Extension(SessionId(sid)): axum::Extension<SessionId>,
    Query(q): Query<TailQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = state.shutdown.clone();
    let req = TailRequest {
        subject: q.subject.trim().to_owned(),
        max_per_second: q.rate.unwrap_or(20),
        sample_rate: q.sample.unwrap_or(1.0),
    };
    let started = match client(&state, &sid) {
        Ok(mut c) => c.tail(req).await.map_err(|s| s.message().to_owned()),
        Err(e) => Err(e),
    };
    let stream = match started {
        Ok(r) => r
            .into_inner()
            .map(|e| match e {
                Ok(e) => item(e),
                Err(s) => TailItem::Error(format!("the tail ended: {}", s.message())),
            })
            .boxed(),
        Err(e) => futures::stream::once(async move { TailItem::Error(e) }).boxed(),
    };
    Sse::new(
        stream
            .map(|i| sse(&i))
            .take_until(async move { stop.cancelled().await }),
    )
    .keep_alive(KeepAlive::default())
}

/// `GET /events/logs`: every gateway's recent warnings, then new ones, as [`LogLine`]s.
pub async fn logs(
    State(state): State<AppState>,
    axum::Extension(SessionId(sid)): axum::Extension<SessionId>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = state.shutdown.clone();
    let req = FollowLogsRequest {
        backlog: 100,
        min_level: String::new(),
        follow: true,
    };
    let stream = match client(&state, &sid) {
        Ok(mut c) => match c.follow_logs(req).await {
            Ok(r) => r
                .into_inner()
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok().map(log_line)))
                .boxed(),
            Err(_) => futures::stream::empty().boxed(),
        },
        Err(_) => futures::stream::empty().boxed(),
    };
    Sse::new(
        stream
            .map(|l| sse(&l))
            .take_until(async move { stop.cancelled().await }),
    )
    .keep_alive(KeepAlive::default())
}

/// The gateways' recent warnings, for the live page's first render (no follow).
pub async fn logs_backlog(mut admin: Admin) -> LivePage {
    let req = FollowLogsRequest {
        backlog: 100,
        min_level: String::new(),
        follow: false,
    };
    match admin.follow_logs(req).await {
        Err(s) => LivePage {
            logs: Vec::new(),
            error: Some(format!("control plane: {}", s.message())),
        },
        Ok(r) => {
            let mut stream = r.into_inner();
            let mut logs = Vec::new();
            while let Some(Ok(r)) = stream.next().await {
                logs.push(log_line(r));
            }
            LivePage { logs, error: None }
        }
    }
}
