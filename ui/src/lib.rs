//! oxeye's web UI: a Leptos app whose pages the query node renders on the server (every page's
//! content and links work without JavaScript) and the browser then hydrates from a WebAssembly
//! bundle built by `scripts/build-ui` and embedded into the binary.
//!
//! Pages read the same HTTP API as everyone else (`/api/v1/...`): on the server through the
//! API's router in-process, in the browser through `fetch`. Every page keeps its state in the
//! URL. Pure parts (trace tree and critical path, service-map layout, chart scales, formatting)
//! are plain modules with unit tests; `ssr` adds the axum router, `hydrate` the wasm entry point.

// The views of the trace page nest deep enough to need more than the default 128.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod format;
pub mod graph;
pub mod pages;
pub mod scale;
pub mod trace_model;
pub mod widgets;

#[cfg(feature = "ssr")]
pub mod server;

/// The browser entry point the hydration script calls once the wasm module is loaded.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
