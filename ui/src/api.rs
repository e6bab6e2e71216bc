//! Reading oxeye's HTTP API from the pages, the same way on both sides: on the server the
//! request goes through the API's axum router in-process (no socket), in the browser through
//! `fetch`. Both return the API's JSON or its error message.

use serde::de::DeserializeOwned;
use std::future::Future;

/// An API failure as the page shows it: the server's message (which says what was wrong).
pub type ApiResult<T> = Result<T, String>;

/// The API router the server renders pages against, provided as Leptos context.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct ApiRouter(pub axum::Router);

/// Takes the message out of the API's error body `{"error": {"message": ...}}`.
fn error_message(status: u16, body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        e.get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .or_else(|| e.as_str().map(str::to_string))
    });
    match message {
        Some(m) => m,
        None if body.trim().is_empty() => format!("the API answered HTTP {status}"),
        None => format!("the API answered HTTP {status}: {}", body.trim()),
    }
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> ApiResult<T> {
    if !(200..300).contains(&status) {
        return Err(error_message(status, &String::from_utf8_lossy(body)));
    }
    // An empty success (e.g. 204 to a DELETE) reads as JSON `null`.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        &b"null"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| format!("the API's answer could not be read: {e}"))
}

/// The HTTP methods the pages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// `GET` a path under the API (e.g. `/api/v1/services`) and decode its JSON.
pub fn get_json<T>(uri: String) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    request(Method::Get, uri, None)
}

/// `POST` a JSON body to a path under the API and decode its JSON answer.
pub fn post_json<T>(
    uri: String,
    body: serde_json::Value,
) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    request(Method::Post, uri, Some(body.to_string()))
}

/// `PUT` a JSON body to a path under the API and decode its JSON answer.
pub fn put_json<T>(
    uri: String,
    body: serde_json::Value,
) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    request(Method::Put, uri, Some(body.to_string()))
}

/// `DELETE` a path under the API and decode its JSON answer (`null` when it has none).
pub fn delete_json<T>(uri: String) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    request(Method::Delete, uri, None)
}

#[cfg(feature = "ssr")]
fn request<T>(
    method: Method,
    uri: String,
    body: Option<String>,
) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let router = leptos::prelude::use_context::<ApiRouter>();
    async move {
        let Some(ApiRouter(router)) = router else {
            return Err(
                "the page was rendered without the API (a bug: ApiRouter context is missing)"
                    .into(),
            );
        };
        let method = match method {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Delete => http::Method::DELETE,
        };
        let builder = http::Request::builder().method(method).uri(&uri);
        let request = match body {
            Some(b) => builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(b)),
            None => builder.body(axum::body::Body::empty()),
        }
        .map_err(|e| format!("bad API request {uri}: {e}"))?;
        let response = match router.oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the API's answer to {uri} failed: {e}"))?
            .to_bytes();
        decode(status, &bytes)
    }
}

#[cfg(not(feature = "ssr"))]
fn request<T>(
    method: Method,
    uri: String,
    body: Option<String>,
) -> impl Future<Output = ApiResult<T>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    send_wrapper::SendWrapper::new(async move {
        let builder = match method {
            Method::Get => gloo_net::http::Request::get(&uri),
            Method::Post => gloo_net::http::Request::post(&uri),
            Method::Put => gloo_net::http::Request::put(&uri),
            Method::Delete => gloo_net::http::Request::delete(&uri),
        };
        let response = match body {
            Some(b) => {
                builder
                    .header("content-type", "application/json")
                    .body(b)
                    .map_err(|e| format!("bad API request {uri}: {e}"))?
                    .send()
                    .await
            }
            None => builder.send().await,
        }
        .map_err(|e| format!("the oxeye server could not be reached ({uri}): {e}"))?;
        let status = response.status();
        let bytes = response
            .binary()
            .await
            .map_err(|e| format!("reading the API's answer to {uri} failed: {e}"))?;
        decode(status, &bytes)
    })
}

/// Percent-encodes a query-string component.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `a=1&b=x%20y` from pairs, leaving out empty values.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", encode(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `path` followed by `?query` when the query is not empty.
pub fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_servers_message() {
        assert_eq!(
            error_message(
                400,
                r#"{"error":{"kind":"bad_request","message":"no column x"}}"#
            ),
            "no column x"
        );
        assert_eq!(error_message(502, ""), "the API answered HTTP 502");
        assert_eq!(
            error_message(500, "boom"),
            "the API answered HTTP 500: boom"
        );
        let r: ApiResult<serde_json::Value> = decode(200, b"{not json");
        assert!(r.is_err());
        let r: ApiResult<serde_json::Value> = decode(204, b"");
        assert_eq!(r, Ok(serde_json::Value::Null));
    }

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            query_string([("service", "web".to_string()), ("tags", String::new())]),
            "service=web"
        );
        assert_eq!(with_query("/x", ""), "/x");
    }
}
