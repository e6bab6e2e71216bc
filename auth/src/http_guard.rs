//! Checks on HTTP listeners (axum middleware) and the UI's login and logout pages.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::{Access, Auth, Denied, Role, bearer_token};

const SESSION_COOKIE: &str = "oxeye_session";

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

fn session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

fn json_denial(denied: &Denied) -> Response {
    let status = match denied {
        Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let body = format!("{{\"error\":{}}}", serde_json_string(&denied.to_string()));
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"oxeye\""),
        );
    }
    r
}

/// A JSON string literal (the crate has no JSON dependency for one string).
fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// OTLP/HTTP: every request needs the ingest role.
pub async fn otlp_guard(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    match auth.check(bearer(req.headers()), None, Access::Ingest) {
        Ok(principal) => {
            if let Some(p) = principal {
                // For the receiver: the token's ingest limit.
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        }
        Err(denied) => json_denial(&denied),
    }
}

/// What a request to the HTTP API or UI needs; `None` for what anyone may fetch.
pub fn access_for(method: &Method, path: &str) -> Option<Access> {
    const OPEN: &[&str] = &["/healthz", "/readyz", "/login", "/logout", "/favicon.ico"];
    if OPEN.contains(&path) || path.starts_with("/pkg/") {
        return None;
    }
    let reads = method == Method::GET || method == Method::HEAD;
    if path.starts_with("/api/v1/admin/") {
        return Some(Access::Admin);
    }
    if path.starts_with("/api/v1/alerts") && !reads && path != "/api/v1/alerts/rules/dry-run" {
        return Some(Access::Admin);
    }
    Some(Access::Read)
}

/// The HTTP API and UI: bearer token or session cookie, by [`access_for`]. A browser asking
/// for a page without a session is sent to the login page.
pub async fn api_guard(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let Some(needs) = access_for(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    match auth.check(bearer(req.headers()), session(req.headers()), needs) {
        Ok(principal) => {
            if let Some(p) = principal {
                // For what serves the request: whose data it may see (the tenant).
                req.extensions_mut().insert(p);
            }
            next.run(req).await
        }
        Err(denied) => {
            let path = req.uri().path();
            let page = req.method() == Method::GET
                && !path.starts_with("/api/")
                && path != "/metrics"
                && !matches!(denied, Denied::Forbidden { .. });
            if page {
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let location = format!("/login?next={}", percent_encode(target));
                redirect(&location)
            } else {
                json_denial(&denied)
            }
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Only paths on this server: no scheme, no `//host`, no backslashes.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn login_page(next: &str, message: Option<&str>, status: StatusCode) -> Response {
    let message = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", html_escape(m)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>oxeye: sign in</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}\
         input,button{{font:inherit;width:100%;padding:.5rem;margin:.25rem 0;box-sizing:border-box}}\
         .error{{color:#b00020}}</style></head><body><h1>oxeye</h1>{message}\
         <form method=\"post\" action=\"/login\">\
         <label for=\"token\">API token (read or admin role)</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Sign in</button></form></body></html>",
        html_escape(next)
    );
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// What the login routes need: the tokens, and whether the session cookie is for HTTPS only.
#[derive(Clone)]
struct LoginState {
    auth: Auth,
    /// `Path=/; HttpOnly; SameSite=Strict`, plus `Secure` when the listener speaks TLS (the
    /// browser then never sends the session over plain text).
    cookie_attributes: &'static str,
}

/// `GET /login` (the form), `POST /login` (form fields `token`, `next`) and `POST /logout`.
/// With auth off, `/login` sends the browser on. `over_tls`: the listener speaks TLS.
pub fn login_routes(auth: Auth, over_tls: bool) -> Router {
    let state = LoginState {
        auth,
        cookie_attributes: if over_tls {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        },
    };
    Router::new()
        .route(
            "/login",
            get(
                |State(state): State<LoginState>,
                 axum::extract::Query(q): axum::extract::Query<NextQuery>| async move {
                    let next = safe_next(q.next.as_deref()).to_string();
                    if !state.auth.enabled() {
                        return redirect(&next);
                    }
                    login_page(&next, None, StatusCode::OK)
                },
            )
            .post(login),
        )
        .route("/logout", axum::routing::post(logout).get(logout))
        .with_state(state)
}

async fn login(State(state): State<LoginState>, body: axum::body::Bytes) -> Response {
    let auth = &state.auth;
    let form: LoginForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => {
            return login_page(
                "/",
                Some(&format!("bad form: {e}")),
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let next = safe_next(form.next.as_deref()).to_string();
    if !auth.enabled() {
        return redirect(&next);
    }
    match auth.verify_token(form.token.trim()) {
        Some(p) if matches!(p.role, Role::Read | Role::Admin) => {
            tracing::info!(token = p.name, "signed in to the UI");
            let id = auth.sessions().start(p);
            let mut r = redirect(&next);
            let cookie = format!(
                "{SESSION_COOKIE}={id}; {}; Max-Age={}",
                state.cookie_attributes,
                crate::sessions::SESSION_TTL.as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(p) => login_page(
            &next,
            Some(&format!(
                "token `{}` may only send telemetry (ingest role); the UI needs read or admin",
                p.name
            )),
            StatusCode::FORBIDDEN,
        ),
        None => login_page(
            &next,
            Some("that token is not valid"),
            StatusCode::UNAUTHORIZED,
        ),
    }
}

async fn logout(State(state): State<LoginState>, req: Request<Body>) -> Response {
    if let Some(id) = session(req.headers()) {
        state.auth.sessions().end(id);
    }
    let mut r = redirect("/login");
    let expired = format!("{SESSION_COOKIE}=; {}; Max-Age=0", state.cookie_attributes);
    if let Ok(v) = HeaderValue::from_str(&expired) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_they_do() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(access_for(&get, "/healthz"), None);
        assert_eq!(access_for(&get, "/pkg/oxeye_ui.js"), None);
        assert_eq!(access_for(&post, "/api/v1/sql"), Some(Access::Read));
        assert_eq!(access_for(&get, "/traces/abc"), Some(Access::Read));
        assert_eq!(access_for(&get, "/metrics"), Some(Access::Read));
        assert_eq!(
            access_for(&post, "/api/v1/admin/flush"),
            Some(Access::Admin)
        );
        assert_eq!(
            access_for(&post, "/api/v1/alerts/rules"),
            Some(Access::Admin)
        );
        assert_eq!(access_for(&get, "/api/v1/alerts/rules"), Some(Access::Read));
        assert_eq!(
            access_for(&post, "/api/v1/alerts/rules/dry-run"),
            Some(Access::Read)
        );
    }

    #[test]
    fn next_only_stays_on_this_server() {
        assert_eq!(safe_next(Some("/traces?x=1")), "/traces?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "javascript:x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn pages_escape_what_they_echo() {
        assert_eq!(
            html_escape("\"><script>alert(1)</script>"),
            "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(percent_encode("/a b?c=<d>"), "/a%20b%3Fc%3D%3Cd%3E");
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; oxeye_session=abc; b=2"),
        );
        assert_eq!(session(&h), Some("abc"));
    }
}
