//! Applications over real sockets: the world's DIAL Core stand-in forwards a configured
//! application's calls to a tiny local upstream (standing in for the coordinator) and
//! streams its answers back.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mas_world::{App, Recorded, World, WorldOptions};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// One request the upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Seen {
    /// Every value of header `name`.
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn one(&self, name: &str) -> String {
        let all = self.all(name);
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        String::from_utf8(all[0].to_vec()).expect("a UTF-8 header")
    }
}

/// The upstream application: records every request and answers by path.
/// `/stream` sends `data: first` at once and `data: [DONE]` once `release` is notified
/// (`/cut`: cuts the connection instead);
/// `/refuse` answers 422 JSON; `/config` answers a JSON schema.
#[derive(Clone)]
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let upstream = Upstream {
            url,
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let seen = Seen {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body,
        };
        self.seen.lock().expect("seen").push(seen);
        let full = |status: u16, content_type: &str, body: &'static str| {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .header("x-upstream", "yes")
                .body(
                    Full::new(Bytes::from_static(body.as_bytes()))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .expect("a response")
        };
        match parts.uri.path() {
            path @ ("/stream" | "/cut") => {
                let cut = path == "/cut";
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
                let release = self.release.clone();
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                        .await;
                    release.notified().await;
                    let last = if cut {
                        // hyper cuts the connection: the chunked body never ends.
                        Err("cut".into())
                    } else {
                        Ok(Frame::data(Bytes::from("data: [DONE]\n\n")))
                    };
                    let _ = tx.send(last).await;
                });
                let body = StreamBody::new(tokio_stream(rx));
                Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed_unsync(body))
                    .expect("a response")
            }
            "/refuse" => full(
                422,
                "application/json",
                r#"{"error":{"message":"no","code":"422"}}"#,
            ),
            "/config" => full(200, "application/json", r#"{"type":"object"}"#),
            _ => full(404, "text/plain", "not found"),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// An mpsc receiver as a stream (tokio-stream is not a dependency).
fn tokio_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Sends one request to `url` (`http://host:port`) and returns the response head with
/// its body unread.
async fn send(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let addr = url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    sender.send_request(request).await.expect("a response")
}

async fn text(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.expect("a body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

fn header<'a>(resp: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

const CHAT: &str = r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn properties() -> Value {
    json!({
        "agents": [{"name": "GPA", "kind": "dial", "deployment": "general-purpose-agent"}],
        "plan_approval": "never",
        "note": "Kyiv, café"
    })
}

async fn world_with(apps: Vec<App>) -> World {
    World::start(WorldOptions {
        apps,
        ..WorldOptions::default()
    })
    .await
    .expect("the world starts")
}

fn services(requests: &[Recorded]) -> Vec<(&str, &str, &str)> {
    requests
        .iter()
        .map(|r| (r.service.as_str(), r.method.as_str(), r.path.as_str()))
        .collect()
}

#[tokio::test]
async fn a_completion_is_forwarded_with_the_application_headers_only_core_sets() {
    let upstream = Upstream::start().await;
    let app =
        App::new("hr-assistant", format!("{}/refuse", upstream.url)).with_properties(properties());
    let world = world_with(vec![app]).await;
    let resp = send(
        &world.core_url(),
        "POST",
        "/openai/deployments/hr-assistant/chat/completions?api-version=2024-02-01",
        &[
            ("Api-Key", "client-key"),
            ("Authorization", "Bearer user-token"),
            ("X-Conversation-Id", "conv-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("Content-Type", "application/json"),
            ("X-DIAL-APPLICATION-ID", "forged-app"),
            (
                "x-dial-application-properties",
                r#"{"plan_approval":"always"}"#,
            ),
        ],
        CHAT,
    )
    .await;
    // The application's answer, status and headers kept.
    assert_eq!(resp.status(), 422);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "x-upstream"), Some("yes"));
    assert_eq!(
        text(resp).await,
        r#"{"error":{"message":"no","code":"422"}}"#
    );

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.target, "/refuse?api-version=2024-02-01");
    assert_eq!(call.body, CHAT.as_bytes());
    assert_eq!(call.one("x-dial-application-id"), "hr-assistant");
    let sent: Value =
        serde_json::from_str(&call.one("x-dial-application-properties")).expect("JSON");
    assert_eq!(sent, properties());
    // Compact, non-ASCII as raw UTF-8 (as Core's Jackson writes it).
    assert_eq!(
        call.one("x-dial-application-properties"),
        serde_json::to_string(&properties()).expect("JSON")
    );
    assert!(call.one("x-dial-application-properties").contains("café"));
    assert_eq!(call.one("api-key"), "client-key");
    assert_eq!(call.one("authorization"), "Bearer user-token");
    assert_eq!(call.one("x-conversation-id"), "conv-1");
    assert_eq!(
        call.one("traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(call.one("content-type"), "application/json");
    assert_eq!(call.one("host"), upstream.url.trim_start_matches("http://"));
    assert_eq!(call.one("content-length"), CHAT.len().to_string());

    // Recorded twice: as received by Core, and as sent to the application.
    let requests = world.requests();
    assert_eq!(
        services(&requests),
        [
            (
                "core",
                "POST",
                "/openai/deployments/hr-assistant/chat/completions"
            ),
            ("app", "POST", "/refuse"),
        ]
    );
    assert_eq!(
        requests[0].header("x-dial-application-id"),
        Some("forged-app")
    );
    let forwarded = &requests[1];
    assert_eq!(forwarded.query.as_deref(), Some("api-version=2024-02-01"));
    assert_eq!(
        forwarded.header("x-dial-application-id"),
        Some("hr-assistant")
    );
    assert_eq!(
        forwarded
            .header("x-dial-application-properties")
            .map(|p| serde_json::from_str::<Value>(p).expect("JSON")),
        Some(properties())
    );
    assert_eq!(forwarded.body, CHAT);
}

#[tokio::test]
async fn the_answer_streams_through_as_it_arrives() {
    let upstream = Upstream::start().await;
    let world = world_with(vec![App::new(
        "travel-assistant",
        format!("{}/stream", upstream.url),
    )])
    .await;
    // The upstream holds its last event until released: the head and the first event
    // must come before.
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            &world.core_url(),
            "POST",
            "/openai/deployments/travel-assistant/chat/completions",
            &[("api-key", "k")],
            CHAT,
        ),
    )
    .await
    .expect("the response head before the upstream ends");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("text/event-stream"));
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event before the upstream ends")
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.into_data().ok(), Some(Bytes::from("data: first\n\n")));
    upstream.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest once released")
        .expect("no error")
        .to_bytes();
    assert_eq!(rest, Bytes::from("data: [DONE]\n\n"));
}

#[tokio::test]
async fn the_configuration_call_is_forwarded_or_answered_empty() {
    let upstream = Upstream::start().await;
    let with = App::new("hr-assistant", format!("{}/refuse", upstream.url))
        .with_configuration_endpoint(format!("{}/config", upstream.url))
        .with_properties(properties());
    let without = App::new("travel-assistant", format!("{}/stream", upstream.url));
    let world = world_with(vec![with, without]).await;

    let resp = send(
        &world.core_url(),
        "GET",
        "/v1/deployments/hr-assistant/configuration?ignored=1",
        &[("api-key", "k"), ("X-Dial-Application-Id", "forged")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(text(resp).await, r#"{"type":"object"}"#);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("GET", "/config")
    );
    assert_eq!(seen[0].one("x-dial-application-id"), "hr-assistant");
    let sent: Value =
        serde_json::from_str(&seen[0].one("x-dial-application-properties")).expect("JSON");
    assert_eq!(sent, properties());
    assert_eq!(seen[0].one("api-key"), "k");

    let resp = send(
        &world.core_url(),
        "GET",
        "/v1/deployments/travel-assistant/configuration",
        &[("api-key", "k")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), None);
    assert_eq!(text(resp).await, "");
    assert_eq!(upstream.seen().len(), 1, "nothing forwarded");

    // A name that is no application has no configuration route in the world.
    let resp = send(
        &world.core_url(),
        "GET",
        "/v1/deployments/general-purpose-agent/configuration",
        &[("api-key", "k")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn only_configured_names_are_forwarded() {
    let upstream = Upstream::start().await;
    // A configured name wins over the scripted deployments (`rag…` is the RAG agent).
    let world = world_with(vec![App::new(
        "rag-agent",
        format!("{}/config", upstream.url),
    )])
    .await;
    let path = |name: &str| format!("/openai/deployments/{name}/chat/completions");
    let resp = send(
        &world.core_url(),
        "POST",
        &path("rag-agent"),
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert_eq!(text(resp).await, r#"{"type":"object"}"#);

    // Every other name is the usual world.
    let resp = send(
        &world.core_url(),
        "POST",
        &path("rag-other"),
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(text(resp).await.contains("RAG[rag-other] got 1 messages"));
    let resp = send(
        &world.core_url(),
        "POST",
        &path("general-purpose-agent"),
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert!(text(resp)
        .await
        .contains("GPA[general-purpose-agent] got 1 messages"));
    assert_eq!(upstream.seen().len(), 1);

    // Without its applications the world is the usual world again.
    world.clear_apps();
    let resp = send(
        &world.core_url(),
        "POST",
        &path("rag-agent"),
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert!(text(resp).await.contains("RAG[rag-agent] got 1 messages"));
    assert_eq!(upstream.seen().len(), 1);

    // Set while running (the coordinator's address is often known only then).
    world
        .set_app(App::new("late", format!("{}/config", upstream.url)))
        .expect("a valid application");
    let resp = send(
        &world.core_url(),
        "POST",
        &path("late"),
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert_eq!(text(resp).await, r#"{"type":"object"}"#);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn core_refuses_before_forwarding_and_reports_an_unreachable_application() {
    let upstream = Upstream::start().await;
    // A port nothing listens on: bound, then closed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let world = world_with(vec![
        App::new("hr-assistant", format!("{}/refuse", upstream.url)),
        App::new(
            "gone",
            format!("http://{closed}/openai/deployments/gone/chat/completions"),
        ),
    ])
    .await;
    let resp = send(
        &world.core_url(),
        "POST",
        "/openai/deployments/hr-assistant/chat/completions",
        &[],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        text(resp).await,
        r#"{"error":{"message":"Missing API key","type":"invalid_request_error","code":"401"}}"#
    );
    assert!(upstream.seen().is_empty());

    let resp = send(
        &world.core_url(),
        "POST",
        "/openai/deployments/gone/chat/completions",
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 502);
    let error: Value = serde_json::from_str(&text(resp).await).expect("JSON");
    assert_eq!(error["error"]["code"], "502");
    assert_eq!(error["error"]["type"], "runtime_error");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The application gone could not be reached: "),
        "{message}"
    );
}

#[tokio::test]
async fn applications_the_world_cannot_serve_are_refused() {
    let duplicate = World::start(WorldOptions {
        apps: vec![
            App::new("a", "http://127.0.0.1:1/x"),
            App::new("a", "http://127.0.0.1:2/x"),
        ],
        ..WorldOptions::default()
    })
    .await;
    assert!(duplicate.is_err());
    let https = World::start(WorldOptions {
        apps: vec![App::new("a", "https://example.com/x")],
        ..WorldOptions::default()
    })
    .await;
    assert!(https.is_err());
    let world = world_with(Vec::new()).await;
    assert!(world
        .set_app(App::new("a", "http://127.0.0.1:1/x").with_properties(json!("no")))
        .is_err());
}

#[tokio::test]
async fn a_body_the_application_cuts_is_cut_for_the_client() {
    let upstream = Upstream::start().await;
    let world = world_with(vec![App::new(
        "hr-assistant",
        format!("{}/cut", upstream.url),
    )])
    .await;
    let resp = send(
        &world.core_url(),
        "POST",
        "/openai/deployments/hr-assistant/chat/completions",
        &[("api-key", "k")],
        CHAT,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("no error yet");
    assert_eq!(first.into_data().ok(), Some(Bytes::from("data: first\n\n")));
    upstream.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the cut reaches the client");
    assert!(
        rest.is_err(),
        "an unterminated body, not a clean end: {rest:?}"
    );
}
