//! `nexus-console`: the Nexus web console for operators, a Leptos 0.8 application rendered on
//! the server and hydrated in the browser.
//!
//! - [`model`]: the data the pages show (shared by server and browser).
//! - [`app`] and [`pages`]: the components, one module per page, and the server functions
//!   they load data with.
//! - `server` (feature `ssr`): the axum server ([`server::serve`]): sessions and login, the
//!   CSRF-checked form actions, the Admin API client, and the monitor that polls the control
//!   plane and every gateway's `/v1/status` and pushes topology snapshots to open pages.
//! - feature `hydrate`: the browser build (`scripts/build-console`), whose entry point is
//!   [`hydrate`].
//!
//! docs/console.md describes the pages, where their data comes from and the access model.

pub mod app;
pub mod diff;
pub mod model;
pub mod pages;

#[cfg(feature = "ssr")]
pub mod server;

/// The browser entry point, called by the hydration script once the wasm is loaded.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
