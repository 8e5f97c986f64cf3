//! The Leptos application: the HTML shell, the router with one route per page, the
//! navigation bar, and the server functions the pages load their data with. The same code
//! renders on the server (feature `ssr`) and hydrates in the browser (feature `hydrate`);
//! server function bodies exist only on the server.

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::{SsrMode, path};

use crate::model::*;
use crate::pages;

/// The document around the app. `hydrate` is false when the site has no wasm: the page then
/// renders on the server only and asks for no scripts.
pub fn shell(options: LeptosOptions, hydrate: bool) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                {hydrate.then(|| view! { <HydrationScripts options/> })}
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="console-css" href="/console.css"/>
        <Title text="Nexus console"/>
        <Router>
            <Nav/>
            <main>
                <Routes fallback=|| view! { <h1>"Not found"</h1> }>
                    <Route path=path!("/") view=pages::topology::TopologyPage ssr=SsrMode::Async/>
                    <Route path=path!("/regions/:name") view=pages::region::RegionPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes") view=pages::routes::RoutesPage ssr=SsrMode::Async/>
                    <Route path=path!("/schemas") view=pages::schemas::SchemasPage ssr=SsrMode::Async/>
                    <Route path=path!("/schemas/:subject") view=pages::schemas::SchemaPage ssr=SsrMode::Async/>
                    <Route path=path!("/keys") view=pages::keys::KeysPage ssr=SsrMode::Async/>
                    <Route path=path!("/trace") view=pages::trace::TracePage ssr=SsrMode::Async/>
                    <Route path=path!("/live") view=pages::live::LivePage ssr=SsrMode::Async/>
                    <Route path=path!("/login") view=pages::login::LoginPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

/// The navigation bar, with who is logged in and the logout button.
#[component]
fn Nav() -> impl IntoView {
    let session = Resource::new(|| (), |_| get_session());
    view! {
        <header class="nav">
            <span class="brand">"Nexus console"</span>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match session.await {
                        Ok(s) if s.logged_in => {
                            view! {
                                <nav>
                                    <A href="/">"Topology"</A>
                                    <A href="/routes">"Routes"</A>
                                    <A href="/schemas">"Schemas"</A>
                                    <A href="/keys">"Keys"</A>
                                    <A href="/trace">"Trace"</A>
                                    <A href="/live">"Live"</A>
                                    // Rendered by the server, not the router: a full page load.
                                    <a href="/audit" rel="external">"Audit"</a>
                                </nav>
                                <span class="who">
                                    {if s.open_control_plane {
                                        "admin API open (no key checked)".to_string()
                                    } else {
                                        format!("key {}", s.key_id.clone().unwrap_or_default())
                                    }}
                                </span>
                                <form method="post" action="/actions/logout" class="inline">
                                    <input type="hidden" name="csrf" value=s.csrf.clone()/>
                                    <button type="submit">"Log out"</button>
                                </form>
                            }
                                .into_any()
                        }
                        _ => ().into_any(),
                    }
                })}
            </Suspense>
        </header>
    }
}

/// Shows a one-time notice or error left by the last action.
#[component]
pub fn FlashBox(flash: Option<Flash>) -> impl IntoView {
    match flash {
        Some(Flash::Notice(m)) => view! { <p class="flash notice" id="flash">{m}</p> }.into_any(),
        Some(Flash::Error(m)) => view! { <p class="flash error" id="flash">{m}</p> }.into_any(),
        Some(Flash::RouteFormError { error, .. }) => {
            view! { <p class="flash error" id="flash">{error}</p> }.into_any()
        }
        _ => ().into_any(),
    }
}

/// An error loading a page's data.
pub fn error_view(e: ServerFnError) -> AnyView {
    view! { <p class="flash error">{format!("Could not load this page: {e}")}</p> }.into_any()
}

// === server functions ===
//
// Read-only: the pages' data. Every change goes through a plain HTML form posted to
// `/actions/...` with the session's CSRF token (see `server::actions`), so it works the
// same with or without the wasm.

#[server(endpoint = "session")]
pub async fn get_session() -> Result<SessionInfo, ServerFnError> {
    crate::server::api::session_info().await
}

#[server(endpoint = "topology")]
pub async fn get_topology() -> Result<TopologyView, ServerFnError> {
    crate::server::api::topology().await
}

#[server(endpoint = "region")]
pub async fn get_region(name: String) -> Result<RegionDetail, ServerFnError> {
    crate::server::api::region(name).await
}

#[server(endpoint = "routes")]
pub async fn get_routes() -> Result<RoutesPage, ServerFnError> {
    crate::server::api::routes().await
}

#[server(endpoint = "schemas")]
pub async fn get_schemas() -> Result<SchemasPage, ServerFnError> {
    crate::server::api::schemas().await
}

#[server(endpoint = "schema")]
pub async fn get_schema(subject: String) -> Result<SchemaSubjectPage, ServerFnError> {
    crate::server::api::schema(subject).await
}

#[server(endpoint = "keys")]
pub async fn get_keys() -> Result<KeysPage, ServerFnError> {
    crate::server::api::keys().await
}

#[server(endpoint = "live")]
pub async fn get_live() -> Result<LivePage, ServerFnError> {
    crate::server::api::live().await
}

#[server(endpoint = "trace")]
pub async fn get_trace(
    id: String,
    subject: String,
    since: String,
    until: String,
) -> Result<TracePage, ServerFnError> {
    crate::server::api::trace(id, subject, since, until).await
}
