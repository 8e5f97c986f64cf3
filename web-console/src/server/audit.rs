//! The audit trail page (`GET /audit`): the control plane's `ListAudit`, read with the
//! session's key, filtered by the query string (a plain GET form), as a table.
//!
//! Rendered here on the server as plain HTML rather than as a Leptos page: it has no
//! interaction beyond its form, so nothing of it needs to be in the wasm bundle. The
//! navigation bar (`app.rs`) links here with `rel="external"` so that the client-side router
//! loads the page from the server instead of looking for a route of its own; this page
//! carries a header with the same links.

use std::fmt::Write;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use nexus_proto::v1::{AuditRecord, ListAuditRequest, ListAuditResponse};
use serde::Deserialize;

use super::AppState;
use super::session::SessionId;
use super::time::fmt_ms;

/// The filters, as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    pub since_seq: String,
    pub actor: String,
    pub kind: String,
    pub name: String,
    pub action: String,
    pub limit: String,
}

impl AuditQuery {
    fn request(&self) -> Result<ListAuditRequest, String> {
        let number = |field: &str, v: &str| -> Result<u64, String> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| format!("{field} must be a whole number, not {v:?}"))
        };
        Ok(ListAuditRequest {
            since_sequence: number("since sequence", &self.since_seq)?,
            since_ms: 0,
            actor: self.actor.trim().to_owned(),
            target_kind: self.kind.trim().to_owned(),
            target_name: self.name.trim().to_owned(),
            action: self.action.trim().to_owned(),
            limit: number("limit", &self.limit)?.min(1000) as u32,
        })
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub async fn page(
    State(state): State<AppState>,
    Extension(SessionId(id)): Extension<SessionId>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let Some(key) = state.sessions.with(&id, |s| s.admin_key.clone()) else {
        return (
            StatusCode::UNAUTHORIZED,
            "the session has ended; log in again\n",
        )
            .into_response();
    };
    let result = match q.request() {
        Err(e) => Err(e),
        Ok(request) => match state.admin.client(key.as_deref()) {
            Err(s) => Err(s.message().to_owned()),
            Ok(mut c) => c
                .list_audit(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("control plane: {}", s.message())),
        },
    };
    Html(render(&q, result)).into_response()
}

fn field(out: &mut String, label: &str, name: &str, value: &str) {
    let _ = write!(
        out,
        r#"<label>{label} <input name="{name}" value="{}"/></label>"#,
        escape(value)
    );
}

fn row(out: &mut String, r: &AuditRecord) {
    let actor = match (r.actor_kind.as_str(), r.actor.as_str()) {
        ("key", id) => format!("key <code>{}</code>", escape(id)),
        (kind, "") => escape(kind),
        (kind, name) => format!("{} {}", escape(kind), escape(name)),
    };
    let _ = write!(
        out,
        "<tr data-seq=\"{seq}\"><td>{seq}</td><td>{time}</td><td>{actor}</td><td>{peer}</td>\
         <td>{action}</td><td>{kind} <code>{name}</code></td><td>{before} → {after}</td>\
         <td>{summary}</td></tr>",
        seq = r.sequence,
        time = escape(&fmt_ms(r.time_ms)),
        peer = escape(if r.peer.is_empty() { "-" } else { &r.peer }),
        action = escape(&r.action),
        kind = escape(&r.target_kind),
        name = escape(&r.target_name),
        before = r.before_version,
        after = r.after_version,
        summary = escape(&r.summary),
    );
}

/// The whole document.
pub fn render(q: &AuditQuery, result: Result<ListAuditResponse, String>) -> String {
    let mut out = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>Audit trail · Nexus console</title>\
         <link rel=\"stylesheet\" href=\"/console.css\"/></head><body>\
         <header class=\"nav\"><span class=\"brand\">Nexus console</span><nav>\
         <a href=\"/\">Topology</a><a href=\"/routes\">Routes</a><a href=\"/schemas\">Schemas</a>\
         <a href=\"/keys\">Keys</a><a href=\"/trace\">Trace</a>\
         <a href=\"/audit\" aria-current=\"page\">Audit</a></nav></header><main>\
         <h1>Audit trail</h1>\
         <p>Every change made through the Admin API (by nexusctl, this console or any other \
         client): who made it, from which address, and the object's version before and after. \
         Changes made in this console come from the console's address, under the key you \
         logged in with. The trail is read-only.</p>\
         <form method=\"get\" action=\"/audit\" class=\"grid\" id=\"audit-form\">",
    );
    field(&mut out, "Actor (key id)", "actor", &q.actor);
    field(&mut out, "Target kind", "kind", &q.kind);
    field(&mut out, "Target name", "name", &q.name);
    field(&mut out, "Action", "action", &q.action);
    field(&mut out, "From sequence", "since_seq", &q.since_seq);
    field(&mut out, "Limit (default 100)", "limit", &q.limit);
    out.push_str("<button type=\"submit\" id=\"audit-filter\">Filter</button></form>");
    match result {
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"flash error\" id=\"flash\">Could not load the audit trail: {}</p>",
                escape(&e)
            );
        }
        Ok(resp) => {
            let _ = write!(
                out,
                "<p id=\"audit-bounds\">{} record(s) shown; the trail holds sequences {} to {}.{}</p>",
                resp.records.len(),
                resp.oldest_sequence,
                resp.latest_sequence,
                if resp.more {
                    " More records match: narrow the filters or page with “From sequence”."
                } else {
                    ""
                }
            );
            out.push_str(
                "<table id=\"audit\"><thead><tr><th>Seq</th><th>Time</th><th>Actor</th>\
                 <th>From</th><th>Action</th><th>Target</th><th>Version</th><th>Summary</th>\
                 </tr></thead><tbody>",
            );
            for r in resp.records.iter().rev() {
                row(&mut out, r);
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_escaped_and_newest_first() {
        let record = |sequence, summary: &str| AuditRecord {
            sequence,
            actor_kind: "key".into(),
            actor: "k1".into(),
            action: "routes.apply".into(),
            target_kind: "route".into(),
            target_name: "orders".into(),
            summary: summary.into(),
            ..Default::default()
        };
        let html = render(
            &AuditQuery {
                actor: "\"><script>".into(),
                ..Default::default()
            },
            Ok(ListAuditResponse {
                records: vec![record(1, "<b>first</b>"), record(2, "second")],
                more: false,
                oldest_sequence: 1,
                latest_sequence: 2,
            }),
        );
        assert!(!html.contains("<script>") && !html.contains("<b>first"));
        assert!(html.contains("&lt;b&gt;first&lt;/b&gt;"));
        assert!(html.find("data-seq=\"2\"").unwrap() < html.find("data-seq=\"1\"").unwrap());
    }

    #[test]
    fn bad_numbers_are_named() {
        let q = AuditQuery {
            limit: "many".into(),
            ..Default::default()
        };
        assert!(q.request().unwrap_err().contains("limit"));
    }
}
