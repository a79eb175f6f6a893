//! A minimal HTTP/1.1 client on hyper's connection API: one TCP connection per
//! [`Conn`], kept alive across requests, with the time to the response head, to the
//! first body byte and to the end of the body measured per request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request, reusable: the body is reference-counted.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON POST, with the DIAL key when `api_key` is set.
    pub fn post_json(path: &str, body: Vec<u8>, api_key: Option<&str>) -> Req {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(key) = api_key {
            headers.push(("api-key", key.to_owned()));
        }
        Req {
            method: Method::POST,
            path: path.to_owned(),
            headers,
            body: Bytes::from(body),
        }
    }
}

/// A complete response and its timing, measured from just before the request was
/// handed to the connection.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    /// Until the first non-empty body frame (the response head if the body is empty).
    pub ttfb: Duration,
    /// Until the end of the body.
    pub total: Duration,
}

impl Resp {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }
}

/// A kept-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends `req` and reads the whole body.
    pub async fn send(&mut self, req: &Req) -> anyhow::Result<Resp> {
        self.sender.ready().await?;
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header("host", self.host.as_str());
        for (name, value) in &req.headers {
            builder = builder.header(*name, value.as_str());
        }
        let request = builder.body(Full::new(req.body.clone()))?;
        let start = Instant::now();
        let response = self.sender.send_request(request).await?;
        let head = start.elapsed();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if !data.is_empty() {
                    first.get_or_insert_with(|| start.elapsed());
                    bytes.extend_from_slice(&data);
                }
            }
        }
        Ok(Resp {
            status,
            body: bytes,
            ttfb: first.unwrap_or(head),
            total: start.elapsed(),
        })
    }
}

/// One request on a new connection (connect time included), as `wasmtime serve`
/// makes every outbound call.
pub async fn send_fresh(addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
    let start = Instant::now();
    let mut conn = Conn::connect(addr).await?;
    let mut resp = conn.send(req).await?;
    resp.total = start.elapsed();
    Ok(resp)
}
