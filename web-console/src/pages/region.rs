//! One region: its gateways (liveness, sessions, subscriptions, traffic), its federation
//! links, and per gateway its cluster links (peer, RTT, traffic), the gateway it goes through
//! in each other region, the top subjects and the balancer's groups with their members'
//! cost, requests in flight and ejections, from the gateways' `/v1/status`.

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use crate::app::{error_view, get_region};
use crate::model::*;

#[component]
pub fn RegionPage() -> impl IntoView {
    let params = use_params_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let detail = Resource::new(name, get_region);
    view! {
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(d) => region_view(d),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

fn region_view(d: RegionDetail) -> AnyView {
    let r = d.region;
    let gateways = r
        .gateways
        .iter()
        .map(|g| {
            view! {
                <tr class=g.health.as_str()>
                    <td>{g.id.clone()}</td>
                    <td class="state">{g.health.as_str()}</td>
                    <td>{g.adapter_addr.clone()}</td>
                    <td>{g.metrics_addr.clone()}</td>
                    <td class="num">{g.sessions}</td>
                    <td class="num">{g.subscriptions}</td>
                    <td class="num">{format!("{:.1}", g.published_per_s)}</td>
                    <td class="num">{format!("{:.1}", g.delivered_per_s)}</td>
                    <td class="num">{g.uptime_s}</td>
                    <td class="num">{g.config_version}</td>
                    <td>{g.problem.clone().unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    let links = d
        .links
        .iter()
        .map(|l| {
            let other = if l.a == r.name { &l.b } else { &l.a };
            view! {
                <tr class=l.health.as_str()>
                    <td>{other.clone()}</td>
                    <td class="state">{l.health.as_str()}</td>
                    <td class="num">{l.rtt_ms.map_or_else(|| "–".to_owned(), |x| format!("{x:.1} ms"))}</td>
                    <td class="num">{format!("{:.1}", l.msgs_per_s)}</td>
                    <td class="num">{l.unconfirmed}</td>
                    <td class="num" title="of which lost in flight (queued or sent on a link that ended unconfirmed)">{format!("{} ({} in flight)", l.dropped, l.lost_in_flight)}</td>
                    <td>{l.note.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    let per_gateway = d
        .statuses
        .into_iter()
        .map(|(id, status)| match status {
            None => view! {
                <section>
                    <h3>{id}</h3>
                    <p class="hint">
                        "This gateway does not report /v1/status (or is unreachable): only its registration and liveness are known."
                    </p>
                </section>
            }
                .into_any(),
            Some(s) => gateway_status_view(id, s),
        })
        .collect_view();
    view! {
        <h1>{format!("Region {}", r.name)}</h1>
        <p class=format!("meta {}", r.health.as_str())>{format!("health: {}", r.health.as_str())}</p>
        <h2>"Gateways"</h2>
        <table>
            <thead>
                <tr>
                    <th>"Gateway"</th><th>"Health"</th><th>"Adapters"</th><th>"Metrics"</th>
                    <th>"Sessions"</th><th>"Subscriptions"</th><th>"pub/s"</th><th>"deliver/s"</th>
                    <th>"Uptime (s)"</th><th>"Config"</th><th>"Problem"</th>
                </tr>
            </thead>
            <tbody>{gateways}</tbody>
        </table>
        <h2>"Federation links"</h2>
        <table>
            <thead><tr><th>"To"</th><th>"Health"</th><th>"RTT"</th><th>"msgs/s"</th><th>"Unconfirmed"</th><th>"Dropped"</th><th>"Why"</th></tr></thead>
            <tbody>{links}</tbody>
        </table>
        {per_gateway}
    }
    .into_any()
}

fn gateway_status_view(id: String, s: GatewayStatus) -> AnyView {
    let subjects = s
        .subjects
        .into_iter()
        .map(|x| view! { <tr><td>{x.pattern}</td><td class="num">{x.subscribers}</td></tr> })
        .collect_view();
    let groups = s
        .balancer
        .into_iter()
        .map(|g| {
            let ejected = g.members.iter().filter(|m| m.ejected).count();
            let members = g
                .members
                .into_iter()
                .map(|m| {
                    view! {
                        <tr class=if m.ejected { "down" } else { "up" }>
                            <td>{m.session}</td>
                            <td class="num">{format!("{:.0}", m.cost_us)}</td>
                            <td class="num">{m.in_flight}</td>
                            <td class="state">{if m.ejected { "ejected" } else { "in rotation" }}</td>
                        </tr>
                    }
                })
                .collect_view();
            view! {
                <h4>{format!("{} (group {}): {} ejected", g.subject, g.group, ejected)}</h4>
                <table>
                    <thead><tr><th>"Session"</th><th>"Cost (µs)"</th><th>"In flight"</th><th>"State"</th></tr></thead>
                    <tbody>{members}</tbody>
                </table>
            }
        })
        .collect_view();
    let cluster = s
        .cluster
        .into_iter()
        .map(|c| {
            view! {
                <tr>
                    <td>{c.gateway_id}</td>
                    <td class="num">{format!("{:.1}", c.rtt_ms)}</td>
                    <td class="num">{c.forwarded}</td>
                    <td class="num">{c.confirmed}</td>
                    <td class="num">{c.received}</td>
                </tr>
            }
        })
        .collect_view();
    let homes = s
        .links
        .into_iter()
        .map(|l| {
            let class = if l.state == "up" { "up" } else { "down" };
            view! {
                <tr class=class>
                    <td>{l.region}</td>
                    <td>{l.via.unwrap_or_else(|| "-".into())}</td>
                    <td class="state">{l.state}</td>
                    <td class="num">{l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}"))}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="gateway-status" id=format!("gateway-{id}")>
            <h3>{format!("{id}: {} sessions, {} subscriptions", s.sessions, s.subscriptions)}</h3>
            <h4>"Cluster links"</h4>
            <table class="cluster-links">
                <thead><tr><th>"Peer gateway"</th><th>"RTT (ms)"</th><th>"Forwarded"</th><th>"Confirmed"</th><th>"Received"</th></tr></thead>
                <tbody>{cluster}</tbody>
            </table>
            <h4>"Homes in other regions"</h4>
            <table class="homes">
                <thead><tr><th>"Region"</th><th>"Via gateway"</th><th>"State"</th><th>"RTT (ms)"</th></tr></thead>
                <tbody>{homes}</tbody>
            </table>
            <h4>"Top subjects"</h4>
            <table>
                <thead><tr><th>"Pattern"</th><th>"Subscribers"</th></tr></thead>
                <tbody>{subjects}</tbody>
            </table>
            <h4>"Balancer"</h4>
            {groups}
        </section>
    }
    .into_any()
}
