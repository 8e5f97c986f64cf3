//! Message trace (docs/trace.md): one message's path as a timeline, every hop every gateway
//! of every region recorded for it (received, route decision, cluster and region hops with
//! their RTT, deliveries and drops with the reason, the reply), from the control plane's
//! `GetTrace`; or, by subject pattern, the recent traced messages, each linking to its
//! timeline. A message not found is explained (not sampled, evicted, never received) with
//! how to force tracing.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::app::{error_view, get_trace};
use crate::model::*;

#[component]
pub fn TracePage() -> impl IntoView {
    let query = use_query_map();
    let param = move |k: &str| {
        query
            .read()
            .get(k)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let data = Resource::new(
        move || (param("id"), param("subject")),
        |(id, subject)| get_trace(id, subject),
    );
    view! {
        <h1>"Message trace"</h1>
        <form method="get" class="inline" id="trace-form">
            <label>"Message id " <input name="id" value=move || param("id")/></label>
            " or "
            <label>"subject " <input name="subject" placeholder="orders.>" value=move || param("subject")/></label>
            <button type="submit">"Look up"</button>
        </form>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => trace_view(p),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

fn trace_view(p: TracePage) -> AnyView {
    if p.id.is_empty() && p.subject.is_empty() {
        return view! {
            <p class="hint">
                "Give a message id (" <code>"nexusctl pub"</code>
                " prints it) or a subject pattern. Gateways record a sample of messages (rate "
                <code>"trace.sample_rate"</code> ") and every message published with the header "
                <code>"nexus-trace: 1"</code> "."
            </p>
        }
        .into_any();
    }
    let unreachable = (!p.unreachable.is_empty()).then(|| {
        view! {
            <p class="flash error" id="trace-unreachable">
                {format!("Not asked (unreachable): {}", p.unreachable.join("; "))}
            </p>
        }
    });
    let rates = p
        .sample_rates
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if p.rows.is_empty() {
        let what = if p.id.is_empty() {
            format!("No traced messages on {:?}", p.subject)
        } else {
            format!("No records of message {}", p.id)
        };
        return view! {
            {unreachable}
            <div class="flash notice" id="trace-result">
                <p>{format!("{what} at any of the {} gateways asked.", p.gateways_asked)}</p>
                <p>
                    {format!("It was not sampled (sample rates: {}), its records were evicted from the bounded store, or no gateway received it. ", if rates.is_empty() { "unknown".to_owned() } else { rates.clone() })}
                    "To trace a message for certain, publish it with the header "
                    <code>"nexus-trace: 1"</code> "."
                </p>
            </div>
        }
        .into_any();
    }
    if p.id.is_empty() {
        // A subject search: one line per message, newest first, each linking to its timeline.
        let mut seen: Vec<(String, String, String, String)> = Vec::new();
        for r in p.rows.iter().rev() {
            if !seen.iter().any(|(id, ..)| *id == r.message_id) {
                seen.push((
                    r.message_id.clone(),
                    r.subject.clone(),
                    r.at.clone(),
                    format!("{}/{}", r.region, r.gateway_id),
                ));
            }
        }
        return view! {
            {unreachable}
            <table id="trace-messages">
                <thead><tr><th>"Message id"</th><th>"Subject"</th><th>"Last seen"</th><th>"At"</th></tr></thead>
                <tbody>
                    {seen.into_iter().map(|(id, subject, at, gw)| view! {
                        <tr>
                            <td><a href=format!("/trace?id={id}")><code>{id.clone()}</code></a></td>
                            <td><code>{subject}</code></td>
                            <td>{at}</td>
                            <td>{gw}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        }
        .into_any();
    }
    let mut path: Vec<String> = Vec::new();
    for r in &p.rows {
        let at = format!("{}/{}", r.region, r.gateway_id);
        if path.last() != Some(&at) {
            path.push(at);
        }
    }
    let mut previous = 0.0;
    view! {
        {unreachable}
        <p id="trace-path">{format!("Path: {}", path.join(" → "))}</p>
        <p class="hint">
            {format!("{} records from {} gateways asked. Offsets use each gateway's own clock; a hop's latency column does not.", p.rows.len(), p.gateways_asked)}
        </p>
        <table id="trace-timeline">
            <thead>
                <tr>
                    <th>"+ms"</th><th>"Δms"</th><th>"Region/gateway"</th><th>"Event"</th>
                    <th>"Reason"</th><th>"Who"</th><th>"Latency"</th><th>"Detail"</th>
                </tr>
            </thead>
            <tbody>
                {p.rows.into_iter().map(|r| {
                    let delta = r.offset_ms - previous;
                    previous = r.offset_ms;
                    let event = r.event.clone();
                    view! {
                        <tr data-event=event>
                            <td>{format!("{:.3}", r.offset_ms)}</td>
                            <td>{format!("{delta:.3}")}</td>
                            <td>{format!("{}/{}", r.region, r.gateway_id)}</td>
                            <td>{r.event}</td>
                            <td>{r.reason}</td>
                            <td>{r.peer}</td>
                            <td>{if r.latency_us > 0 { format!("{:.3} ms", r.latency_us as f64 / 1e3) } else { String::new() }}</td>
                            <td>{r.detail}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}
