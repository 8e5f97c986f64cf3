//! API keys: the list, and create / rotate / revoke. Each change is two steps: the first form
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
                    <th>"Created"</th><th>"Expires"</th><th>"State"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
        <h2>"Create a key"</h2>
        <form method="post" action="/actions/keys/create" class="grid" id="key-form">
            <input type="hidden" name="csrf" value=csrf/>
            <label>"Name" <input name="name" required/></label>
            <label>"Publish patterns (comma-separated)" <input name="publish"/></label>
            <label>"Subscribe patterns (comma-separated)" <input name="subscribe"/></label>
            <label>"Expires in days (0 = never)" <input name="expires_in_days" value="0"/></label>
            <label class="check"><input type="checkbox" name="admin" value="yes"/>" admin (may use the Admin API)"</label>
            <button type="submit" id="key-create">"Create…"</button>
        </form>
    }
    .into_any()
}
