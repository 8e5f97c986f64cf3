//! The live page (`/live`): a live tail of the messages published on a subject pattern, as
//! every gateway taps them (sampled and rate-limited at the gateways, payload previews
//! redacted by the control plane per subject: docs/trace.md §7), and the gateways' WARN and
//! ERROR events as they happen (§8). Both follow server-sent event streams
//! (`/events/tail`, `/events/logs`) once the wasm has loaded; the server's first render
//! shows the recent warnings, and says that the tail needs the script.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::app::{error_view, get_live};
use crate::model::*;

/// Lines kept on the page.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const KEEP: usize = 300;

/// Percent-encodes a query parameter.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[component]
pub fn LivePage() -> impl IntoView {
    let query = use_query_map();
    let param = move |k: &str| {
        query
            .read()
            .get(k)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let data = Resource::new(|| (), |_| get_live());
    view! {
        <h1>"Live"</h1>
        <h2>"Live tail"</h2>
        <form method="get" class="inline" id="tail-form">
            <label>"Subject pattern " <input name="subject" placeholder="orders.>" value=move || param("subject")/></label>
            " "
            <label>"at most " <input name="rate" size="4" value=move || { let r = param("rate"); if r.is_empty() { "20".to_owned() } else { r } }/> " msgs/s per gateway"</label>
            <button type="submit">"Tail"</button>
        </form>
        <p class="hint">
            "Messages as the gateway that received them from their publisher sees them. Payloads are shown only as far as each subject's "
            <code>"tail_preview"</code> " setting allows (" <code>"nexusctl schemas set-tail-preview"</code>
            "): none by default. A tail never slows publishers: beyond its rate, or when this page falls behind, messages are skipped and counted."
        </p>
        {move || {
            let subject = param("subject");
            let rate = param("rate");
            if subject.is_empty() {
                view! { <p class="hint" id="tail-state">"Give a subject pattern to start."</p> }.into_any()
            } else {
                view! { <LiveTail subject rate/> }.into_any()
            }
        }}
        <h2>"Gateway warnings"</h2>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => view! { <LiveLogs initial=p/> }.into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

#[component]
fn LiveTail(subject: String, rate: String) -> impl IntoView {
    let lines = RwSignal::new(Vec::<TailLine>::new());
    let counters = RwSignal::new(None::<TailCounters>);
    let error = RwSignal::new(None::<String>);
    // "static" until the wasm opens the stream.
    let live = RwSignal::new("static");
    let url = format!(
        "/events/tail?subject={}{}",
        escape(&subject),
        if rate.is_empty() {
            String::new()
        } else {
            format!("&rate={}", escape(&rate))
        }
    );
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        listen(
            &url,
            move |text| match serde_json::from_str::<TailItem>(&text) {
                Ok(TailItem::Message(m)) => lines.update(|l| {
                    l.insert(0, m);
                    l.truncate(KEEP);
                }),
                Ok(TailItem::Stats(s)) => {
                    live.set("live");
                    counters.set(Some(s));
                }
                Ok(TailItem::Error(e)) => error.set(Some(e)),
                Err(_) => {}
            },
            || {},
            live,
        )
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = &url;
    let state = move || match live.get() {
        "live" => format!("● tailing {subject}"),
        "reconnecting" => "○ reconnecting…".to_owned(),
        _ => {
            "○ the live tail needs the page's script (or use nexusctl tail from a shell)".to_owned()
        }
    };
    let stats = move || {
        counters.get().map(|c| {
            let unreachable = (!c.unreachable.is_empty())
                .then(|| format!("; not tapped: {}", c.unreachable.join("; ")));
            format!(
                "{} gateway(s) tapped · {} matched · {} shown · skipped {} (rate limit) + {} (too slow){}",
                c.gateways,
                c.matched,
                c.sent,
                c.dropped_rate_limit,
                c.dropped_slow_viewer,
                unreachable.unwrap_or_default()
            )
        })
    };
    view! {
        <p class="meta">
            <span id="tail-state" data-live=move || live.get()>{state}</span>
            " · "
            <span id="tail-stats">{stats}</span>
        </p>
        {move || error.get().map(|e| view! { <p class="flash error" id="tail-error">{e}</p> })}
        <table id="tail-messages">
            <thead>
                <tr>
                    <th>"Time"</th><th>"Region/gateway"</th><th>"Kind"</th><th>"Subject"</th>
                    <th>"Message id"</th><th>"Bytes"</th><th>"Preview"</th>
                </tr>
            </thead>
            <tbody>
                <For each=move || lines.get() key=|l| l.message_id.clone() let:l>
                    <tr data-subject=l.subject.clone()>
                        <td>{l.at.clone()}</td>
                        <td>{format!("{}/{}", l.region, l.gateway_id)}</td>
                        <td>{l.kind.clone()}</td>
                        <td><code>{l.subject.clone()}</code></td>
                        <td><a href=format!("/trace?id={}", l.message_id)><code>{l.message_id.clone()}</code></a></td>
                        <td class="num">{l.payload_bytes}</td>
                        <td>
                            <code class="preview">{l.preview.clone()}</code>
                            " "
                            <span class="hint">{format!("[{}]", l.preview_note)}</span>
                        </td>
                    </tr>
                </For>
            </tbody>
        </table>
    }
}

#[component]
fn LiveLogs(initial: LivePage) -> impl IntoView {
    let mut first = initial.logs;
    first.reverse();
    let logs = RwSignal::new(first);
    let live = RwSignal::new("static");
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        listen(
            "/events/logs",
            move |text| {
                if let Ok(l) = serde_json::from_str::<LogLine>(&text) {
                    live.set("live");
                    logs.update(|v| {
                        v.insert(0, l);
                        v.truncate(KEEP);
                    })
                }
            },
            // The stream starts with the backlog again: it replaces the first render's.
            move || logs.set(Vec::new()),
            live,
        )
    });
    let error = initial
        .error
        .map(|e| view! { <p class="flash error">{e}</p> });
    view! {
        {error}
        <p class="meta">
            <span id="logs-state" data-live=move || live.get()>
                {move || if live.get() == "live" { "● live" } else { "○ as of the page load" }}
            </span>
        </p>
        {move || logs.with(|l| l.is_empty()).then(|| view! { <p class="hint" id="logs-empty">"No warnings from any gateway."</p> })}
        <table id="logs">
            <thead>
                <tr><th>"Time"</th><th>"Region/gateway"</th><th>"Level"</th><th>"Where"</th><th>"Message"</th><th>"Fields"</th></tr>
            </thead>
            <tbody>
                {move || logs.get().into_iter().map(|l| {
                    let class = l.level.to_ascii_lowercase();
                    view! {
                    <tr class=class data-gateway=l.gateway_id.clone()>
                        <td>{l.at}</td>
                        <td>{format!("{}/{}", l.region, l.gateway_id)}</td>
                        <td>{l.level}</td>
                        <td><code>{l.target}</code></td>
                        <td>{l.message}</td>
                        <td><code>{l.fields}</code></td>
                    </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// Opens an event stream at `url`: every message's text goes to `on_message`, `on_open` runs
/// at each (re)connection, `live` says whether it is connected. Closed with the component.
#[cfg(feature = "hydrate")]
fn listen(
    url: &str,
    mut on_message: impl FnMut(String) + 'static,
    mut on_open: impl FnMut() + 'static,
    live: RwSignal<&'static str>,
) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let Ok(source) = web_sys::EventSource::new(url) else {
        return;
    };
    let message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
            if let Some(text) = ev.data().as_string() {
                on_message(text);
            }
        });
    let open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        live.set("live");
        on_open();
    });
    let error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| live.set("reconnecting"));
    source.set_onmessage(Some(message.as_ref().unchecked_ref()));
    source.set_onopen(Some(open.as_ref().unchecked_ref()));
    source.set_onerror(Some(error.as_ref().unchecked_ref()));
    message.forget();
    open.forget();
    error.forget();
    let source = send_wrapper::SendWrapper::new(source);
    on_cleanup(move || source.close());
}
