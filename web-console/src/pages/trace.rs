//! Message trace (docs/trace.md): one message's path as a timeline, every hop every gateway
//! of every region recorded for it (received, route decision, cluster and region hops with
//! their RTT, deliveries and drops with the reason, the reply), from the control plane's
//! `GetTrace`; or, by subject pattern, the recent traced messages, each linking to its
//! timeline, within a time window (`since`, `until`: a duration back from now or a UTC
//! time). A message's path is drawn on the topology map (every region and its gateways; the
//! hops in order as numbered arrows between gateways, labelled with the time since the
//! previous gateway's last record and the hop's own latency). A message not found is
//! explained (not sampled, evicted, never received) with how to force tracing.

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
        move || {
            (
                param("id"),
                param("subject"),
                param("since"),
                param("until"),
            )
        },
        |(id, subject, since, until)| get_trace(id, subject, since, until),
    );
    view! {
        <h1>"Message trace"</h1>
        <form method="get" class="inline" id="trace-form">
            <label>"Message id " <input name="id" value=move || param("id")/></label>
            " or "
            <label>"subject " <input name="subject" placeholder="orders.>" value=move || param("subject")/></label>
            " "
            <label>"from " <input name="since" size="16" placeholder="10m or 2026-12-03 17:30" value=move || param("since")/></label>
            " "
            <label>"to " <input name="until" size="16" placeholder="now" value=move || param("until")/></label>
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
    let windowed = !p.since.is_empty() || !p.until.is_empty();
    if p.window.starts_with("time window") {
        // The window could not be read: `window` says why.
        return view! { <p class="flash error" id="trace-window">{p.window}</p> }.into_any();
    }
    if p.id.is_empty() && p.subject.is_empty() && !windowed {
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
            format!(
                "No traced messages on {:?}{}",
                if p.subject.is_empty() {
                    ">"
                } else {
                    &p.subject
                },
                if p.window.is_empty() {
                    String::new()
                } else {
                    format!(" {}", p.window)
                }
            )
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
        let window = (!p.window.is_empty())
            .then(|| view! { <p class="hint" id="trace-window">{format!("Traced messages {}", p.window)}</p> });
        return view! {
            {unreachable}
            {window}
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
    let map = map_view(&p);
    view! {
        {unreachable}
        <p id="trace-path">{format!("Path: {}", path.join(" → "))}</p>
        {map}
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

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;

/// Where region `i` of `n` sits: evenly on an ellipse, the first at the top (as on the
/// topology page).
fn position(i: usize, n: usize) -> (f64, f64) {
    if n <= 1 {
        return (WIDTH / 2.0, HEIGHT / 2.0);
    }
    let angle = -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n as f64;
    (
        WIDTH / 2.0 + 220.0 * angle.cos(),
        HEIGHT / 2.0 + 130.0 * angle.sin(),
    )
}

/// One hop of the path: from one gateway to the next, in record order.
#[derive(Debug, PartialEq)]
pub struct Hop {
    pub from: String,
    pub to: String,
    /// Time between the last record at `from` and the first at `to` (two clocks).
    pub delta_ms: f64,
    /// The hop's own latency the receiving gateway measured (link RTT, round trip), µs.
    pub latency_us: u64,
}

/// The hops of a timeline: every change of gateway between consecutive records.
pub fn hops(rows: &[TraceRow]) -> Vec<Hop> {
    let mut out = Vec::new();
    let mut at: Option<(String, f64)> = None;
    for r in rows {
        let here = format!("{}/{}", r.region, r.gateway_id);
        if let Some((prev, prev_ms)) = &at
            && *prev != here
        {
            out.push(Hop {
                from: prev.clone(),
                to: here.clone(),
                delta_ms: r.offset_ms - prev_ms,
                latency_us: r.latency_us,
            });
        }
        at = Some((here, r.offset_ms));
    }
    out
}

/// The path drawn on the topology: regions (with their health) as large circles, their
/// gateways as small ones inside, each hop a numbered arrow between gateways.
fn map_view(p: &TracePage) -> impl IntoView + use<> {
    let mut regions: Vec<(String, Health, Vec<String>)> = p
        .map
        .iter()
        .map(|r| (r.name.clone(), r.health, r.gateways.clone()))
        .collect();
    // Gateways on the path the topology does not know (any more) are drawn too.
    for r in &p.rows {
        match regions.iter_mut().find(|(name, ..)| *name == r.region) {
            Some((_, _, gws)) => {
                if !gws.contains(&r.gateway_id) {
                    gws.push(r.gateway_id.clone());
                }
            }
            None => regions.push((
                r.region.clone(),
                Health::Unknown,
                vec![r.gateway_id.clone()],
            )),
        }
    }
    let n = regions.len();
    let mut spots: Vec<(String, (f64, f64))> = Vec::new();
    let on_path: Vec<String> = p
        .rows
        .iter()
        .map(|r| format!("{}/{}", r.region, r.gateway_id))
        .collect();
    let region_nodes = regions
        .iter()
        .enumerate()
        .map(|(i, (name, health, gws))| {
            let (x, y) = position(i, n);
            let k = gws.len().max(1);
            let gateway_nodes = gws
                .iter()
                .enumerate()
                .map(|(j, g)| {
                    let (gx, gy) = if k == 1 {
                        (x, y + 8.0)
                    } else {
                        let a = std::f64::consts::TAU * j as f64 / k as f64;
                        (x + 26.0 * a.cos(), y + 8.0 + 20.0 * a.sin())
                    };
                    let key = format!("{name}/{g}");
                    let class = if on_path.contains(&key) { "gateway on-path" } else { "gateway" };
                    spots.push((key.clone(), (gx, gy)));
                    view! {
                        <g class=class data-gateway=key>
                            <circle cx=format!("{gx:.1}") cy=format!("{gy:.1}") r="7"></circle>
                            <text class="gateway-name" x=format!("{gx:.1}") y=format!("{:.1}", gy + 17.0)>{g.clone()}</text>
                        </g>
                    }
                })
                .collect_view();
            view! {
                <g class=format!("region {}", health.as_str()) id=format!("trace-region-{name}")>
                    <circle cx=format!("{x:.1}") cy=format!("{y:.1}") r="50"></circle>
                    <text class="region-name" x=format!("{x:.1}") y=format!("{:.1}", y - 30.0)>{name.clone()}</text>
                    {gateway_nodes}
                </g>
            }
        })
        .collect_view();
    // The federation links, beneath everything.
    let index = |name: &str| regions.iter().position(|(r, ..)| r == name);
    let links = p
        .map_links
        .iter()
        .filter_map(|(a, b, health)| {
            let (x1, y1) = position(index(a)?, n);
            let (x2, y2) = position(index(b)?, n);
            Some(view! {
                <line
                    class=format!("map-link {}", health.as_str())
                    x1=format!("{x1:.1}")
                    y1=format!("{y1:.1}")
                    x2=format!("{x2:.1}")
                    y2=format!("{y2:.1}")
                ></line>
            })
        })
        .collect_view();
    let spot = |k: &str| spots.iter().find(|(s, _)| s == k).map(|(_, p)| *p);
    let hop_views = hops(&p.rows)
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let (x1, y1) = spot(&h.from)?;
            let (x2, y2) = spot(&h.to)?;
            // Bend each arrow to its left, more for later hops, so a way back (a reply)
            // does not cover the way there.
            let (dx, dy) = (x2 - x1, y2 - y1);
            let len = (dx * dx + dy * dy).sqrt().max(1.0);
            let bend = 18.0 + 6.0 * (i % 4) as f64;
            let (cx, cy) = (
                (x1 + x2) / 2.0 - dy / len * bend,
                (y1 + y2) / 2.0 + dx / len * bend,
            );
            let mut label = format!("{}: +{:.3} ms", i + 1, h.delta_ms);
            if h.latency_us > 0 {
                label.push_str(&format!(" (latency {:.3} ms)", h.latency_us as f64 / 1e3));
            }
            Some(view! {
                <g class="hop">
                    <path
                        id=format!("hop-{}", i + 1)
                        data-from=h.from.clone()
                        data-to=h.to.clone()
                        d=format!("M {x1:.1} {y1:.1} Q {cx:.1} {cy:.1} {x2:.1} {y2:.1}")
                        marker-end="url(#hop-arrow)"
                    >
                        <title>{format!("{} → {}", h.from, h.to)}</title>
                    </path>
                    <text class="hop-label" x=format!("{cx:.1}") y=format!("{cy:.1}")>{label}</text>
                </g>
            })
        })
        .collect_view();
    view! {
        <svg id="trace-map" viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label="The message's path over regions and gateways">
            <defs>
                <marker id="hop-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
                    <path d="M 0 0 L 10 5 L 0 10 z"></path>
                </marker>
            </defs>
            {links}
            {region_nodes}
            {hop_views}
        </svg>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, gw: &str, offset_ms: f64, latency_us: u64) -> TraceRow {
        TraceRow {
            message_id: "m".into(),
            offset_ms,
            at: String::new(),
            region: region.into(),
            gateway_id: gw.into(),
            event: String::new(),
            reason: String::new(),
            subject: String::new(),
            peer: String::new(),
            detail: String::new(),
            latency_us,
        }
    }

    #[test]
    fn hops_follow_changes_of_gateway() {
        let rows = [
            row("a", "a1", 0.0, 0),
            row("a", "a1", 0.5, 0),
            row("b", "b1", 2.5, 1500),
            row("b", "b1", 3.0, 0),
            row("a", "a1", 5.0, 0),
        ];
        assert_eq!(
            hops(&rows),
            vec![
                Hop {
                    from: "a/a1".into(),
                    to: "b/b1".into(),
                    delta_ms: 2.0,
                    latency_us: 1500
                },
                Hop {
                    from: "b/b1".into(),
                    to: "a/a1".into(),
                    delta_ms: 2.0,
                    latency_us: 0
                },
            ]
        );
    }
}
