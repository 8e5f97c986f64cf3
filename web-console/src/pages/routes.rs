//! Routes: policy, failover order and consistency contract from the control plane, the
//! replication lag and spool depth the gateways measure for each, and a form to create one
//! (posted to `/actions/routes/create`).

use leptos::prelude::*;

use crate::app::{FlashBox, error_view, get_routes};
use crate::model::*;

#[component]
pub fn RoutesPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_routes());
    view! {
        <h1>"Routes"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => routes_view(p),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

fn routes_view(p: RoutesPage) -> AnyView {
    let form = match &p.flash {
        Some(Flash::RouteFormError { form, .. }) => form.clone(),
        _ => RouteForm {
            consistency: "best_effort".into(),
            policy: "local_first".into(),
            ..Default::default()
        },
    };
    let rows = p
        .routes
        .into_iter()
        .map(|r| {
            let lag = match (r.replication_lag_ms, r.reporting_gateways) {
                (_, 0) => "not reported".to_owned(),
                (Some(l), n) => format!("{l:.1} ms (max of {n} gateways)"),
                (None, n) => format!("none measured ({n} gateways)"),
            };
            view! {
                <tr data-route=r.name.clone()>
                    <td>{r.name.clone()}</td>
                    <td>{r.subjects.join(", ")}</td>
                    <td>{r.policy}</td>
                    <td>{if r.failover.is_empty() { "–".to_owned() } else { r.failover.join(" → ") }}</td>
                    <td>{r.consistency}</td>
                    <td>{lag}</td>
                    <td class="num">{r.spool_depth.map(|d| d.to_string()).unwrap_or_else(|| "–".into())}</td>
                    <td class="num">{r.version}</td>
                    <td>{r.updated}</td>
                    <td>{r.description}</td>
                </tr>
            }
        })
        .collect_view();
    let regions = p.regions.join(", ");
    let option = |value: &'static str, current: &str| {
        view! { <option value=value selected=value == current>{value}</option> }
    };
    view! {
        <FlashBox flash=p.flash.clone()/>
        <table id="routes">
            <thead>
                <tr>
                    <th>"Name"</th><th>"Subjects"</th><th>"Policy"</th><th>"Failover order"</th>
                    <th>"Consistency"</th><th>"Replication lag"</th><th>"Spool"</th>
                    <th>"Version"</th><th>"Updated"</th><th>"Description"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
        <h2>"Create a route"</h2>
        <form method="post" action="/actions/routes/create" id="route-form" class="grid">
            <input type="hidden" name="csrf" value=p.csrf/>
            <label>"Name" <input name="name" required value=form.name/></label>
            <label>"Subjects (comma-separated patterns)" <input name="subjects" required value=form.subjects/></label>
            <label>"Policy"
                <select name="policy">
                    {option("local_first", &form.policy)}
                    {option("nearest", &form.policy)}
                    {option("pinned", &form.policy)}
                    {option("weighted", &form.policy)}
                    {option("broadcast", &form.policy)}
                </select>
            </label>
            <label>"Pinned region (pinned only)" <input name="pinned_region" value=form.pinned_region/></label>
            <label>"Weights (weighted only: region=weight, …)" <input name="weights" value=form.weights/></label>
            <label>"Failover order (regions, comma-separated)" <input name="failover" value=form.failover/></label>
            <label>"Consistency"
                <select name="consistency">
                    {option("local", &form.consistency)}
                    {option("best_effort", &form.consistency)}
                    {option("async", &form.consistency)}
                    {option("sync", &form.consistency)}
                </select>
            </label>
            <label>"Sync quorum (sync only; 0 = all)" <input name="sync_quorum" value=form.sync_quorum/></label>
            <label>"Description" <input name="description" value=form.description/></label>
            <p class="hint">{format!("Known regions: {}", if regions.is_empty() { "none yet".to_owned() } else { regions })}</p>
            <button type="submit" id="route-create">"Create route"</button>
        </form>
    }
    .into_any()
}
