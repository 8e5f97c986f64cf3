//! The login page: an admin key pasted into a form posted to `/actions/login`. The key is
//! checked against the control plane and kept on the server in the session; the browser only
//! holds an HttpOnly, SameSite=Strict session cookie.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// Messages for the `?error=` codes the login action redirects with (codes, never secrets).
fn message(code: &str) -> &'static str {
    match code {
        "unauthenticated" => {
            "The control plane does not know that key (or it is revoked or expired)."
        }
        "forbidden" => "That key is valid but has no admin scope.",
        "unreachable" => "The control plane cannot be reached; try again.",
        "empty" => "Paste an admin key.",
        "expired" => "Your session ended; log in again.",
        _ => "Login failed.",
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.read().get("error").map(|c| message(&c));
    view! {
        <h1>"Log in"</h1>
        {move || error().map(|m| view! { <p class="flash error" id="flash">{m}</p> })}
        <form method="post" action="/actions/login" class="grid" id="login-form">
            <label>
                "Admin key"
                <input type="password" name="key" autocomplete="off" placeholder="nxk_…"/>
            </label>
            <button type="submit" id="login">"Log in"</button>
        </form>
        <p class="hint">
            "Use a key with the admin scope (nexusctl keys create … --admin). When the control plane runs with "
            <code>"--admin-auth off"</code>
            " (as in nexus dev) it checks no keys: any key, or none, logs in, and the console says so."
        </p>
    }
}
