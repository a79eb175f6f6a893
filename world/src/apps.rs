//! Applications: deployment names the DIAL Core stand-in does not answer itself but
//! forwards, as DIAL Core does for an instance of a custom application type — the
//! completion call and the configuration call go to the application's endpoints with
//! `X-DIAL-APPLICATION-ID` and `X-DIAL-APPLICATION-PROPERTIES` set by Core. The answer
//! is streamed back as it arrives. This module owns the forwarding; it answers nothing
//! itself beyond Core's own refusals (401, 502) and the empty configuration.

use crate::fault::Fault;
use crate::http::{finish, Abort, Body, BoxError, Reply};
use crate::state::{Recorded, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{HeaderMap, Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// An application instance served through the DIAL Core stand-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The deployment name clients call (`/openai/deployments/<name>/...`).
    pub name: String,
    /// The URL the completion call is POSTed to, used as is (`http://` only), e.g.
    /// `http://127.0.0.1:8055/openai/deployments/hr-assistant/chat/completions`.
    pub completion_endpoint: String,
    /// The URL the configuration call is sent to (`http://` only); without one, Core
    /// answers the configuration call with an empty 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_endpoint: Option<String>,
    /// The instance's properties, sent as `X-DIAL-APPLICATION-PROPERTIES`; a JSON object.
    #[serde(default = "empty_object")]
    pub properties: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl App {
    /// An application with no configuration endpoint and no properties (`{}`).
    pub fn new(name: impl Into<String>, completion_endpoint: impl Into<String>) -> App {
        App {
            name: name.into(),
            completion_endpoint: completion_endpoint.into(),
            configuration_endpoint: None,
            properties: empty_object(),
        }
    }

    /// The same application with this configuration endpoint.
    pub fn with_configuration_endpoint(mut self, url: impl Into<String>) -> App {
        self.configuration_endpoint = Some(url.into());
        self
    }

    /// The same application with these properties (checked to be an object on use).
    pub fn with_properties(mut self, properties: Value) -> App {
        self.properties = properties;
        self
    }

    /// Why the world cannot serve this application, if it cannot.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let name = &self.name;
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/'),
            "application name {name:?} must be a non-empty deployment name without `/`"
        );
        endpoint(&self.completion_endpoint)
            .map_err(|e| anyhow::anyhow!("the completion endpoint of application {name}: {e}"))?;
        if let Some(url) = &self.configuration_endpoint {
            endpoint(url).map_err(|e| {
                anyhow::anyhow!("the configuration endpoint of application {name}: {e}")
            })?;
        }
        anyhow::ensure!(
            self.properties.is_object(),
            "the properties of application {name} must be a JSON object, not {}",
            self.properties
        );
        Ok(())
    }
}

/// `url` as an `http://host[:port]/path[?query]` URI.
fn endpoint(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "{url:?} is not an http:// URL (the world speaks plain HTTP only)"
        ));
    }
    Ok(uri)
}

/// The configured applications by name, changeable while the world runs.
#[derive(Debug, Default)]
pub(crate) struct Apps(Mutex<BTreeMap<String, App>>);

impl Apps {
    /// Adds `app`, replacing an application of the same name.
    pub(crate) fn set(&self, app: App) -> anyhow::Result<()> {
        app.check()?;
        crate::state::lock(&self.0).insert(app.name.clone(), app);
        Ok(())
    }

    pub(crate) fn clear(&self) {
        crate::state::lock(&self.0).clear();
    }

    fn get(&self, name: &str) -> Option<App> {
        crate::state::lock(&self.0).get(name).cloned()
    }
}

/// Which of an application's calls a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `POST /openai/deployments/<name>/chat/completions`
    Completion,
    /// `GET /v1/deployments/<name>/configuration`
    Configuration,
}

/// The application name and call of a request path, for any name.
fn call_of<'a>(method: &Method, path: &'a str) -> Option<(&'a str, Call)> {
    let (name, call) = if *method == Method::POST {
        let name = path
            .strip_prefix("/openai/deployments/")?
            .strip_suffix("/chat/completions")?;
        (name, Call::Completion)
    } else if *method == Method::GET {
        let name = path
            .strip_prefix("/v1/deployments/")?
            .strip_suffix("/configuration")?;
        (name, Call::Configuration)
    } else {
        return None;
    };
    (!name.is_empty() && !name.contains('/')).then_some((name, call))
}

/// Headers Core sets itself: a client's copies never reach the application.
const APPLICATION_ID: &str = "x-dial-application-id";
const APPLICATION_PROPERTIES: &str = "x-dial-application-properties";

/// Headers of one connection (RFC 9110 §7.6.1) plus the framing ones, which hyper
/// writes for the new connection itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The headers sent to the application: the client's (but the hop-by-hop ones, `Host`
/// and the two application headers), then `Host` of the endpoint and the two
/// application headers as Core sets them.
fn forwarded_headers(app: &App, client: &HeaderMap, url: &Uri) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        let dropped = HOP_BY_HOP.contains(&name.as_str())
            || *name == HOST
            || name == APPLICATION_ID
            || name == APPLICATION_PROPERTIES;
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let host = HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
    headers.insert(HOST, host);
    let id = HeaderValue::from_str(&app.name).map_err(|e| e.to_string())?;
    headers.insert(HeaderName::from_static(APPLICATION_ID), id);
    // Compact JSON as Core's Jackson writes it: raw UTF-8, control characters escaped,
    // so every byte is one a header value may hold.
    let properties = HeaderValue::from_bytes(app.properties.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    headers.insert(HeaderName::from_static(APPLICATION_PROPERTIES), properties);
    Ok(headers)
}

/// The URL a call goes to: the endpoint as configured, with the client's query string
/// appended to a completion call (as Core does for applications). `None`: the
/// application has no configuration endpoint.
fn target(app: &App, call: Call, query: Option<&str>) -> Option<String> {
    match call {
        Call::Completion => Some(match query {
            Some(query) if !query.is_empty() => {
                let joiner = if app.completion_endpoint.contains('?') {
                    '&'
                } else {
                    '?'
                };
                format!("{}{joiner}{query}", app.completion_endpoint)
            }
            _ => app.completion_endpoint.clone(),
        }),
        Call::Configuration => app.configuration_endpoint.clone(),
    }
}

fn has_api_key(headers: &HeaderMap) -> bool {
    headers
        .get("api-key")
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
}

/// Answers a request for a configured application, or `None` when the path names no
/// configured application (the stand-in's own deployments then answer).
pub(crate) async fn handle(
    shared: &Shared,
    apps: &Apps,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Option<Result<Response<Body>, Abort>> {
    let (name, call) = call_of(method, path)?;
    let app = apps.get(name)?;
    let no_fault = Fault::default();
    if !has_api_key(headers) {
        let reply = Reply::dial_error(401, "invalid_request_error", "Missing API key");
        return Some(Ok(finish(reply, &no_fault)));
    }
    let Some(url) = target(&app, call, query) else {
        // Core's answer when the application has no configuration endpoint.
        let empty = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        return Some(Ok(Response::new(empty)));
    };
    Some(Ok(
        match forward(shared, &app, method, headers, &url, body).await {
            Ok(resp) => resp,
            Err(e) => {
                let message = format!("The application {} could not be reached: {e}", app.name);
                finish(Reply::dial_error(502, "runtime_error", &message), &no_fault)
            }
        },
    ))
}

/// Sends the call to `url` (recorded as service `app`) and streams the answer back:
/// status and headers kept (but the hop-by-hop ones), body frames passed on as they
/// arrive.
async fn forward(
    shared: &Shared,
    app: &App,
    method: &Method,
    client_headers: &HeaderMap,
    url: &str,
    body: &Bytes,
) -> Result<Response<Body>, String> {
    let url = endpoint(url)?;
    let headers = forwarded_headers(app, client_headers, &url)?;
    let path_and_query = url
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    shared.record(Recorded {
        service: "app".to_owned(),
        method: method.as_str().to_owned(),
        path: url.path().to_owned(),
        query: url.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    });
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = method.clone();
    *request.uri_mut() = path_and_query.parse().map_err(|e| format!("{e}"))?;
    *request.headers_mut() = headers;

    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let address = if url.port().is_some() {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection until the answer's body is done (or dropped, when the
    // client goes away: then the application sees its caller leave too).
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (mut parts, incoming) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let body = incoming.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app() -> App {
        App::new(
            "hr-assistant",
            "http://127.0.0.1:8055/openai/deployments/hr-assistant/chat/completions",
        )
        .with_properties(json!({"plan_approval": "never", "note": "café\n"}))
    }

    #[test]
    fn calls_of_paths() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            call_of(&post, "/openai/deployments/hr/chat/completions"),
            Some(("hr", Call::Completion))
        );
        assert_eq!(
            call_of(&get, "/v1/deployments/hr/configuration"),
            Some(("hr", Call::Configuration))
        );
        assert_eq!(
            call_of(&get, "/openai/deployments/hr/chat/completions"),
            None
        );
        assert_eq!(call_of(&post, "/v1/deployments/hr/configuration"), None);
        assert_eq!(
            call_of(&post, "/openai/deployments//chat/completions"),
            None
        );
        assert_eq!(call_of(&get, "/v1/deployments/a/b/configuration"), None);
    }

    #[test]
    fn the_application_headers_replace_the_clients() {
        let mut client = HeaderMap::new();
        client.insert("api-key", HeaderValue::from_static("k"));
        client.insert("x-conversation-id", HeaderValue::from_static("c1"));
        client.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        client.insert("connection", HeaderValue::from_static("close"));
        client.insert("content-length", HeaderValue::from_static("2"));
        client.insert(APPLICATION_ID, HeaderValue::from_static("forged"));
        client.insert(APPLICATION_PROPERTIES, HeaderValue::from_static("{}"));
        let url = endpoint(&app().completion_endpoint).unwrap_or_default();
        let headers = forwarded_headers(&app(), &client, &url).unwrap_or_default();
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("api-key", &b"k"[..]),
                ("x-conversation-id", b"c1"),
                ("host", b"127.0.0.1:8055"),
                ("x-dial-application-id", b"hr-assistant"),
                (
                    "x-dial-application-properties",
                    r#"{"note":"café\n","plan_approval":"never"}"#.as_bytes()
                ),
            ]
        );
    }

    #[test]
    fn the_clients_query_follows_a_completion_only() {
        let app = app().with_configuration_endpoint("http://127.0.0.1:8055/config?v=1");
        assert_eq!(
            target(&app, Call::Completion, Some("api-version=1")).as_deref(),
            Some(
                "http://127.0.0.1:8055/openai/deployments/hr-assistant/chat/completions?api-version=1"
            )
        );
        assert_eq!(
            target(&app, Call::Configuration, Some("api-version=1")).as_deref(),
            Some("http://127.0.0.1:8055/config?v=1")
        );
        assert_eq!(target(&self::app(), Call::Configuration, None), None);
    }

    #[test]
    fn checks() {
        assert!(app().check().is_ok());
        let bad = [
            App::new("", "http://127.0.0.1:1/x"),
            App::new("a/b", "http://127.0.0.1:1/x"),
            App::new("a", "https://127.0.0.1:1/x"),
            App::new("a", "/openai/deployments/a/chat/completions"),
            App::new("a", "http://127.0.0.1:1/x").with_configuration_endpoint("nope"),
            App::new("a", "http://127.0.0.1:1/x").with_properties(json!([1])),
        ];
        for app in bad {
            assert!(app.check().is_err(), "{app:?}");
        }
    }
}
