//! Message trace lookup by message id. Nexus stores no traces itself: gateways record a span
//! per hop and export them over OTLP when configured, so the page says plainly that it has
//! no trace data rather than inventing any.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn TracePage() -> impl IntoView {
    let query = use_query_map();
    let id = move || {
        query
            .read()
            .get("id")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    view! {
        <h1>"Message trace"</h1>
        <form method="get" class="inline" id="trace-form">
            <label>"Message id " <input name="id" value=move || id().unwrap_or_default()/></label>
            <button type="submit">"Look up"</button>
        </form>
        {move || id().map(|id| view! {
            <div class="flash notice" id="trace-result">
                <p>{format!("No trace data for message id {id}.")}</p>
                <p>
                    "The console has no trace store to query: gateways keep no per-message history. Each hop is a "
                    <code>"tracing"</code>
                    " span carrying the message's W3C traceparent, exported over OTLP when the gateways run with "
                    <code>"OTEL_EXPORTER_OTLP_ENDPOINT"</code>
                    " set; look the message up in that tracing backend."
                </p>
            </div>
        })}
    }
}
