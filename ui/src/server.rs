//! The server side of the UI: renders every page with leptos_axum against the API router
//! in-process and serves the embedded browser bundle.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{LeptosRoutes, generate_route_list};

use crate::api::ApiRouter;
use crate::app::{App, shell};

mod bundle {
    /// One file of the browser bundle, as built and gzipped.
    pub struct Asset {
        pub raw: &'static [u8],
        pub gzip: &'static [u8],
        pub etag: &'static str,
    }
    pub struct Bundle {
        pub js: Asset,
        pub wasm: Asset,
    }
    include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
}

/// Whether this build carries the browser bundle (pages hydrate) or renders HTML only.
pub fn has_browser_bundle() -> bool {
    bundle::BUNDLE.is_some()
}

fn serve_asset(
    asset: &'static bundle::Asset,
    content_type: &'static str,
    request: &HeaderMap,
) -> Response {
    if request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let gzip_ok = request
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip_ok {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (headers, asset.gzip).into_response()
    } else {
        (headers, asset.raw).into_response()
    }
}

async fn bundle_js(request: HeaderMap) -> Response {
    match &bundle::BUNDLE {
        Some(b) => serve_asset(&b.js, "text/javascript; charset=utf-8", &request),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn bundle_wasm(request: HeaderMap) -> Response {
    match &bundle::BUNDLE {
        Some(b) => serve_asset(&b.wasm, "application/wasm", &request),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn api_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"kind": "not_found", "message": "no such API endpoint; see /api/v1/..."}})),
    )
        .into_response()
}

/// The API router with the UI beside it: pages at `/`, `/traces`, `/traces/{id}`, `/services`,
/// `/logs`, `/explore`, `/sql`; the bundle under `/pkg`. Call inside the tokio runtime.
pub fn router(api: Router) -> Router {
    let options = LeptosOptions::builder()
        .output_name("oxeye_ui")
        .site_pkg_dir("pkg")
        .build();
    let with_bundle = has_browser_bundle();
    if !with_bundle {
        tracing::warn!(
            "this oxeye was built without the UI's browser bundle: pages render but are not interactive; build with scripts/build-ui"
        );
    }
    let routes = generate_route_list(App);
    let context = {
        let api = api.clone();
        move || provide_context(ApiRouter(api.clone()))
    };
    let page = {
        let options = options.clone();
        move || shell(options.clone(), with_bundle)
    };
    let ui = Router::new()
        .leptos_routes_with_context(&options, routes, context.clone(), page.clone())
        .route("/pkg/oxeye_ui.js", get(bundle_js))
        .route("/pkg/oxeye_ui_bg.wasm", get(bundle_wasm))
        .route("/api/{*rest}", any(api_not_found))
        .fallback(leptos_axum::render_app_async_with_context(context, page))
        .with_state(options);
    api.merge(ui)
}
