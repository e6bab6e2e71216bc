//! The page shell, the header every page shares, and the routes.

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::{
    SsrMode,
    components::{A, Form, Redirect, Route, Router, Routes},
    hooks::use_query_map,
    path,
};

use crate::format::{self, Clock};
use crate::pages;
use crate::widgets::use_clock;

/// The stylesheet, inlined into every page: no second request, nothing from outside.
pub const STYLE: &str = include_str!("../style.css");

/// The whole document; the server renders it, the browser hydrates `<body>`.
pub fn shell(options: LeptosOptions, with_bundle: bool) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light"/>
                <link rel="icon" href="data:,"/>
                <style>{STYLE}</style>
                {with_bundle.then(|| view! { <HydrationScripts options/> })}
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
    let (clock, set_clock) = signal(Clock::Utc);
    provide_context(clock);
    // Effects run only in the browser, after hydration: switch times to the reader's zone and
    // mark the page interactive (tests and the time-to-interactive benchmark wait for it).
    Effect::new(move |_| {
        set_clock.set(Clock::Local);
        mark_hydrated();
    });
    view! {
        <Title text="oxeye"/>
        <Router>
            <Header/>
            <main>
                <Routes fallback=NotFound>
                    <Route path=path!("/") view=pages::traces::TracesPage ssr=SsrMode::Async/>
                    <Route path=path!("/traces") view=pages::traces::TracesPage ssr=SsrMode::Async/>
                    <Route path=path!("/traces/:id") view=pages::trace::TracePage ssr=SsrMode::Async/>
                    <Route path=path!("/go") view=GoToTrace ssr=SsrMode::Async/>
                    <Route path=path!("/services") view=pages::services::ServiceMapPage ssr=SsrMode::Async/>
                    <Route path=path!("/services/:service") view=pages::services::ServicePage ssr=SsrMode::Async/>
                    <Route path=path!("/logs") view=pages::logs::LogsPage ssr=SsrMode::Async/>
                    <Route path=path!("/explore") view=pages::metrics::MetricsPage ssr=SsrMode::Async/>
                    <Route path=path!("/sql") view=pages::sql::SqlPage ssr=SsrMode::Async/>
                    <Route path=path!("/alerts") view=pages::alerts::AlertsPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

fn mark_hydrated() {
    #[cfg(feature = "hydrate")]
    if let Some(root) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.document_element())
    {
        let _ = root.set_attribute("data-hydrated", "true");
    }
}

#[component]
fn Header() -> impl IntoView {
    let clock = use_clock();
    view! {
        <header class="top">
            <a class="brand" href="/" rel="external">"oxeye"</a>
            <nav>
                <A href="/traces">"Traces"</A>
                <A href="/services">"Services"</A>
                <A href="/logs">"Logs"</A>
                <A href="/explore">"Metrics"</A>
                <A href="/sql">"SQL"</A>
                <A href="/alerts">"Alerts"</A>
            </nav>
            <div class="goto">
                <Form method="GET" action="/go">
                    <input name="trace_id" placeholder="Go to trace id" aria-label="Trace id" size="34" autocomplete="off" spellcheck="false"/>
                </Form>
            </div>
            <span class="zone" title="Times are shown in this zone">
                {move || match clock.get() {
                    Clock::Utc => "UTC".to_string(),
                    Clock::Local => format!("local time ({})", format::zone_label(0, Clock::Local)),
                }}
            </span>
        </header>
    }
}

/// Normalises a pasted trace id: trims, lowercases, drops dashes and `0x`; a 16-digit id is
/// padded to 32 as OTLP does for 64-bit ids.
pub fn normalise_trace_id(text: &str) -> Option<String> {
    let t = text
        .trim()
        .trim_start_matches("0x")
        .replace('-', "")
        .to_lowercase();
    if !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match t.len() {
        32 => Some(t),
        16 => Some(format!("{:0>32}", t)),
        _ => None,
    }
}

/// `/go?trace_id=...`: the header's box; redirects to the trace, whatever its age.
#[component]
fn GoToTrace() -> impl IntoView {
    let query = use_query_map();
    move || {
        let raw = query.read().get("trace_id").unwrap_or_default();
        match normalise_trace_id(&raw) {
            Some(id) => view! { <Redirect path=format!("/traces/{id}")/> }.into_any(),
            None => view! {
                <section class="page">
                    <h1>"Go to trace"</h1>
                    <div class="state error" role="alert">
                        "“" {raw.clone()} "” is not a trace id: paste 32 (or 16) hexadecimal digits."
                    </div>
                </section>
            }
            .into_any(),
        }
    }
}

#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <section class="page">
            <h1>"Not found"</h1>
            <p>"No page here. Try " <a href="/traces">"trace search"</a> "."</p>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_trace_id;

    #[test]
    fn pasted_trace_ids() {
        assert_eq!(
            normalise_trace_id(" 8A074B77BA47F2FD0E683142ECB55A6A "),
            Some("8a074b77ba47f2fd0e683142ecb55a6a".into())
        );
        assert_eq!(
            normalise_trace_id("84856969f295acc1"),
            Some("000000000000000084856969f295acc1".into())
        );
        assert_eq!(normalise_trace_id("not-a-trace"), None);
        assert_eq!(normalise_trace_id(""), None);
    }
}
