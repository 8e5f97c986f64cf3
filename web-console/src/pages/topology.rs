//! The global topology: every region as a node of an SVG map, federation links between them
//! with their RTT and traffic, and tables with the same data. In the browser the map follows
//! the server's event stream (`/events/topology`, one snapshot per poll) without reloading;
//! clicking a region shows its details beside the map.

use leptos::prelude::*;
use leptos_router::components::A;

use crate::app::{error_view, get_topology};
use crate::model::*;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;

/// Where region `i` of `n` sits on the map: evenly on an ellipse, the first at the top.
fn position(i: usize, n: usize) -> (f64, f64) {
    if n <= 1 {
        return (WIDTH / 2.0, HEIGHT / 2.0);
    }
    let angle = -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n as f64;
    (
        WIDTH / 2.0 + 230.0 * angle.cos(),
        HEIGHT / 2.0 + 140.0 * angle.sin(),
    )
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn fmt_rtt(rtt: Option<f64>) -> String {
    rtt.map_or_else(|| "–".to_owned(), |r| format!("{r:.1} ms"))
}

#[component]
pub fn TopologyPage() -> impl IntoView {
    let initial = Resource::new(|| (), |_| get_topology());
    view! {
        <h1>"Global topology"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match initial.await {
                    Ok(t) => view! { <LiveTopology initial=t/> }.into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

#[component]
fn LiveTopology(initial: TopologyView) -> impl IntoView {
    let topo = RwSignal::new(initial);
    let selected = RwSignal::new(None::<String>);
    // "static" until the browser's event stream is open: only the wasm opens it.
    let live = RwSignal::new("static");

    #[cfg(feature = "hydrate")]
    Effect::new(move |_| subscribe(topo, live));

    let map = move || {
        topo.with(|t| {
            let n = t.regions.len();
            let index = |name: &str| t.regions.iter().position(|r| r.name == name);
            let links = t
                .links
                .iter()
                .filter_map(|l| {
                    let (x1, y1) = position(index(&l.a)?, n);
                    let (x2, y2) = position(index(&l.b)?, n);
                    let label = format!("{} · {}/s", fmt_rtt(l.rtt_ms), fmt_rate(l.msgs_per_s));
                    Some(view! {
                        <g class=format!("link {}", l.health.as_str())>
                            <line
                                id=l.dom_id()
                                data-state=l.health.as_str()
                                x1=format!("{x1:.1}")
                                y1=format!("{y1:.1}")
                                x2=format!("{x2:.1}")
                                y2=format!("{y2:.1}")
                            >
                                <title>{l.note.clone()}</title>
                            </line>
                            <text
                                class="link-label"
                                x=format!("{:.1}", (x1 + x2) / 2.0)
                                y=format!("{:.1}", (y1 + y2) / 2.0 - 6.0)
                            >
                                {label}
                            </text>
                        </g>
                    })
                })
                .collect_view();
            let nodes = t
                .regions
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (x, y) = position(i, n);
                    let name = r.name.clone();
                    let is_selected = selected.with(|s| s.as_deref() == Some(r.name.as_str()));
                    view! {
                        <g
                            class=format!(
                                "region {}{}",
                                r.health.as_str(),
                                if is_selected { " selected" } else { "" },
                            )
                            id=format!("region-{}", r.name)
                            data-state=r.health.as_str()
                            on:click=move |_| selected.set(Some(name.clone()))
                        >
                            <circle cx=format!("{x:.1}") cy=format!("{y:.1}") r="38"></circle>
                            <text class="region-name" x=format!("{x:.1}") y=format!("{:.1}", y - 4.0)>
                                {r.name.clone()}
                            </text>
                            <text class="region-stats" x=format!("{x:.1}") y=format!("{:.1}", y + 12.0)>
                                {format!("{} gw · {}/s", r.gateways.len(), fmt_rate(r.msgs_per_s))}
                            </text>
                        </g>
                    }
                })
                .collect_view();
            view! {
                {links}
                {nodes}
            }
        })
    };

    let details = move || {
        let Some(name) = selected.get() else {
            return view! {
                <p class="hint" id="selection">"Click a region on the map to see its gateways and links here."</p>
            }
                .into_any();
        };
        topo.with(|t| {
            let Some(r) = t.regions.iter().find(|r| r.name == name) else {
                return view! { <p id="selection">{format!("Region {name} is no longer known.")}</p> }
                    .into_any();
            };
            let gateways = r
                .gateways
                .iter()
                .map(|g| {
                    view! {
                        <li>
                            {format!(
                                "{} ({}): {} sessions, {}/s published",
                                g.id,
                                g.health.as_str(),
                                g.sessions,
                                fmt_rate(g.published_per_s),
                            )}
                        </li>
                    }
                })
                .collect_view();
            let links = t
                .links
                .iter()
                .filter(|l| l.a == name || l.b == name)
                .map(|l| {
                    let other = if l.a == name { &l.b } else { &l.a };
                    view! {
                        <li>{format!("to {other}: {} · {}", l.health.as_str(), fmt_rtt(l.rtt_ms))}</li>
                    }
                })
                .collect_view();
            view! {
                <div id="selection" class="selection">
                    <h2>{format!("Selected region: {}", r.name)}</h2>
                    <p>{format!("health: {}", r.health.as_str())}</p>
                    <h3>"Gateways"</h3>
                    <ul>{gateways}</ul>
                    <h3>"Links"</h3>
                    <ul>{links}</ul>
                    <A href=format!("/regions/{}", r.name)>"Open the region page"</A>
                </div>
            }
                .into_any()
        })
    };

    let tables = move || {
        topo.with(|t| {
            let regions = t
                .regions
                .iter()
                .map(|r| {
                    let gws = r
                        .gateways
                        .iter()
                        .map(|g| format!("{} ({})", g.id, g.health.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = r.name.clone();
                    view! {
                        <tr class=r.health.as_str() data-region=r.name.clone()>
                            <td><A href=format!("/regions/{name}")>{name.clone()}</A></td>
                            <td class="state">{r.health.as_str()}</td>
                            <td>{if gws.is_empty() { "none".to_owned() } else { gws }}</td>
                            <td class="num">{fmt_rate(r.msgs_per_s)}</td>
                        </tr>
                    }
                })
                .collect_view();
            let links = t
                .links
                .iter()
                .map(|l| {
                    view! {
                        <tr class=l.health.as_str() data-link=l.dom_id()>
                            <td>{format!("{} ↔ {}", l.a, l.b)}</td>
                            <td class="state">{l.health.as_str()}</td>
                            <td class="num">{fmt_rtt(l.rtt_ms)}</td>
                            <td class="num">{fmt_rate(l.msgs_per_s)}</td>
                            <td class="num">{l.unconfirmed}</td>
                    <td class="num" title="of which lost in flight (queued or sent on a link that ended unconfirmed)">{format!("{} ({} in flight)", l.dropped, l.lost_in_flight)}</td>
                            <td>{l.note.clone()}</td>
                        </tr>
                    }
                })
                .collect_view();
            let error = t
                .error
                .clone()
                .map(|e| view! { <p class="flash error">{e}</p> });
            view! {
                {error}
                <h2>"Regions"</h2>
                <table>
                    <thead><tr><th>"Region"</th><th>"Health"</th><th>"Gateways"</th><th>"msgs/s"</th></tr></thead>
                    <tbody>{regions}</tbody>
                </table>
                <h2>"Federation links"</h2>
                <table id="links">
                    <thead>
                        <tr><th>"Link"</th><th>"Health"</th><th>"RTT"</th><th>"msgs/s"</th><th>"Unconfirmed"</th><th>"Dropped"</th><th>"Why"</th></tr>
                    </thead>
                    <tbody>{links}</tbody>
                </table>
            }
        })
    };

    view! {
        <p class="meta">
            <span id="live" data-live=move || live.get()>
                {move || if live.get() == "live" { "● live" } else { "○ not live (reload to refresh)" }}
            </span>
            " · polled "
            <span id="polled-at">{move || topo.with(|t| t.polled_at.clone())}</span>
            " · config version "
            {move || topo.with(|t| t.config_version)}
        </p>
        <div class="topology">
            <svg id="map" viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label="Regions and federation links">
                {map}
            </svg>
            <aside>{details}</aside>
        </div>
        {tables}
    }
}

/// Opens the server's topology event stream and feeds every snapshot into `topo`.
#[cfg(feature = "hydrate")]
fn subscribe(topo: RwSignal<TopologyView>, live: RwSignal<&'static str>) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let Ok(source) = web_sys::EventSource::new("/events/topology") else {
        return;
    };
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
            if let Some(text) = ev.data().as_string()
                && let Ok(t) = serde_json::from_str::<TopologyView>(&text)
            {
                topo.set(t);
                live.set("live");
            }
        });
    // EventSource reconnects by itself; show the gap meanwhile.
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| live.set("reconnecting"));
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    // The closures live as long as the page's source; the page closes it on cleanup.
    on_message.forget();
    on_error.forget();
    let source = send_wrapper::SendWrapper::new(source);
    on_cleanup(move || source.close());
}
