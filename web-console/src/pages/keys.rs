//! API keys: the list (with each key's rate limits and certificate binding), and create /
//! rotate / revoke, set or clear limits, bind to client certificates or lift the binding.
//! Each change is two steps: the first form
//! stores the intended action in the session and the page asks for confirmation; only the
//! confirmation performs it. A created or rotated key's secret is shown once, on the page
//! right after, and never appears in a URL.

use leptos::prelude::*;

use crate::app::{FlashBox, error_view, get_keys};
use crate::model::*;

#[component]
pub fn KeysPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| get_keys());
    view! {
        <h1>"API keys"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => keys_view(p),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

fn describe(action: &PendingKeyAction) -> String {
    match action {
        PendingKeyAction::Create {
            name,
            publish,
            subscribe,
            admin,
            expires_in_days,
        } => format!(
            "Create key {name:?} with publish [{}], subscribe [{}]{}{}?",
            publish.join(", "),
            subscribe.join(", "),
            if *admin { ", admin" } else { "" },
            if *expires_in_days > 0 {
                format!(", expiring in {expires_in_days} days")
            } else {
                String::new()
            },
        ),
        PendingKeyAction::Rotate {
            id,
            name,
            overlap_seconds,
        } => format!(
            "Rotate key {name} ({id})? A new secret is issued; the current one keeps working for {overlap_seconds} s."
        ),
        PendingKeyAction::Revoke { id, name } => format!(
            "Revoke key {name} ({id})? Sessions using it are closed within about a second. This cannot be undone."
        ),
        PendingKeyAction::SetLimits { id, name, limits } => {
            if limits.is_unlimited() {
                format!("Clear the rate limits of key {name} ({id})? It becomes unlimited.")
            } else {
                format!(
                    "Limit key {name} ({id}) to {}? Every gateway applies it within seconds.",
                    limits.describe()
                )
            }
        }
        PendingKeyAction::SetBinding {
            id,
            name,
            sha256,
            names,
        } => {
            if sha256.is_empty() && names.is_empty() {
                format!(
                    "Lift the certificate binding of key {name} ({id})? Any connection may then present it."
                )
            } else {
                format!(
                    "Bind key {name} ({id}) to client certificates: {}? Sessions presenting it without a matching certificate are closed.",
                    describe_binding(sha256, names)
                )
            }
        }
    }
}

fn keys_view(p: KeysPage) -> AnyView {
    let csrf = p.csrf.clone();
    let secret = match &p.flash {
        Some(Flash::KeySecret { id, name, secret }) => Some(view! {
            <div class="flash notice secret">
                <p>{format!("Key {name} ({id}). Copy the secret now: it is shown only this once.")}</p>
                <code id="new-secret">{secret.clone()}</code>
            </div>
        }),
        _ => None,
    };
    let pending = p.pending.as_ref().map(|a| {
        view! {
            <div class="confirm" id="confirm">
                <p>{describe(a)}</p>
                <form method="post" action="/actions/keys/confirm" class="inline">
                    <input type="hidden" name="csrf" value=csrf.clone()/>
                    <button type="submit" id="confirm-yes" class="danger">"Confirm"</button>
                </form>
                <form method="post" action="/actions/keys/cancel" class="inline">
                    <input type="hidden" name="csrf" value=csrf.clone()/>
                    <button type="submit" id="confirm-no">"Cancel"</button>
                </form>
            </div>
        }
    });
    // The keys that limits and bindings can be set on.
    let live: Vec<(String, String)> = p
        .keys
        .iter()
        .filter(|k| !k.revoked)
        .map(|k| (k.id.clone(), format!("{} ({})", k.name, k.id)))
        .collect();
    let options = move || {
        live.iter()
            .map(|(id, label)| view! { <option value=id.clone()>{label.clone()}</option> })
            .collect_view()
    };
    let rows = p
        .keys
        .into_iter()
        .map(|k| {
            let csrf = csrf.clone();
            let actions = (!k.revoked).then(|| {
                view! {
                    <form method="post" action="/actions/keys/rotate" class="inline">
                        <input type="hidden" name="csrf" value=csrf.clone()/>
                        <input type="hidden" name="id" value=k.id.clone()/>
                        <button type="submit">"Rotate…"</button>
                    </form>
                    <form method="post" action="/actions/keys/revoke" class="inline">
                        <input type="hidden" name="csrf" value=csrf/>
                        <input type="hidden" name="id" value=k.id.clone()/>
                        <button type="submit" class="danger">"Revoke…"</button>
                    </form>
                }
            });
            let state = if k.revoked {
                "revoked".to_owned()
            } else if let Some(until) = &k.previous_valid_until {
                format!("rotating (old secret until {until})")
            } else {
                "active".to_owned()
            };
            view! {
                <tr data-key=k.id.clone() class=if k.revoked { "down" } else { "up" }>
                    <td>{k.name}</td>
                    <td><code>{k.id.clone()}</code></td>
                    <td>{k.publish.join(", ")}</td>
                    <td>{k.subscribe.join(", ")}</td>
                    <td>{if k.admin { "yes" } else { "" }}</td>
                    <td>{k.created}</td>
                    <td>{k.expires}</td>
                    <td class="limits">{k.limits.describe()}</td>
                    <td class="binding">{describe_binding(&k.cert_sha256, &k.cert_names)}</td>
                    <td class="state">{state}</td>
                    <td>{actions}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <FlashBox flash=p.flash.clone()/>
        {secret}
        {pending}
        <table id="keys">
            <thead>
                <tr>
                    <th>"Name"</th><th>"Id"</th><th>"Publish"</th><th>"Subscribe"</th><th>"Admin"</th>
                    <th>"Created"</th><th>"Expires"</th><th>"Rate limits"</th><th>"Certificate"</th>
                    <th>"State"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
        <h2>"Create a key"</h2>
        <form method="post" action="/actions/keys/create" class="grid" id="key-form">
            <input type="hidden" name="csrf" value=csrf.clone()/>
            <label>"Name" <input name="name" required/></label>
            <label>"Publish patterns (comma-separated)" <input name="publish"/></label>
            <label>"Subscribe patterns (comma-separated)" <input name="subscribe"/></label>
            <label>"Expires in days (0 = never)" <input name="expires_in_days" value="0"/></label>
            <label class="check"><input type="checkbox" name="admin" value="yes"/>" admin (may use the Admin API)"</label>
            <button type="submit" id="key-create">"Create…"</button>
        </form>
        <h2>"Rate limits"</h2>
        <p class="hint">"Per key, enforced by every gateway of a region (each takes its share: docs/security.md). 0 = unlimited; a burst of 0 is one second's worth."</p>
        <form method="post" action="/actions/keys/limits" class="grid" id="limits-form">
            <input type="hidden" name="csrf" value=csrf.clone()/>
            <label>"Key" <select name="id">{options.clone()}</select></label>
            <label>"Messages per second" <input name="msgs_per_sec" value="0" inputmode="numeric"/></label>
            <label>"Message burst" <input name="burst_msgs" value="0" inputmode="numeric"/></label>
            <label>"Payload bytes per second" <input name="bytes_per_sec" value="0" inputmode="numeric"/></label>
            <label>"Byte burst" <input name="burst_bytes" value="0" inputmode="numeric"/></label>
            <button type="submit" id="limits-set">"Set limits…"</button>
            <button type="submit" name="clear" value="yes" id="limits-clear">"Clear limits…"</button>
        </form>
        <h2>"Certificate binding"</h2>
        <p class="hint">"A bound key is accepted only from a TLS session whose client certificate has one of these SHA-256 fingerprints or DNS names (gateways started with --tls-client-ca)."</p>
        <form method="post" action="/actions/keys/binding" class="grid" id="binding-form">
            <input type="hidden" name="csrf" value=csrf/>
            <label>"Key" <select name="id">{options}</select></label>
            <label>"SHA-256 fingerprints (comma-separated)" <input name="sha256"/></label>
            <label>"DNS names (comma-separated)" <input name="names" placeholder="orders.client.nexus"/></label>
            <label>"Or paste PEM certificates" <textarea name="pem" rows="4"></textarea></label>
            <button type="submit" id="binding-set">"Bind…"</button>
            <button type="submit" name="clear" value="yes" id="binding-clear">"Clear binding…"</button>
        </form>
    }
    .into_any()
}
