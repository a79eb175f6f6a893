//! A small HTTP/1.1 client for the coordination calls: one connection per call
//! (plain TCP or TLS), bounded by the coordinator's own timeouts, reading at
//! most the coordinator's bound of a non-streaming answer.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mas_coordinator::client::{Method, OutboundRequest};
use mas_coordinator::limits::MAX_ANSWER_BYTES;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// Longest wait for a TCP connection and its TLS handshake (within the
/// first-byte timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body (at most [`MAX_ANSWER_BYTES`]).
    pub body: Vec<u8>,
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The endpoint could not be reached (address, connection, TLS): nothing
    /// else will get through either.
    Unreachable(String),
    /// The call was sent but failed (timeout, cut connection, body too large).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) | CallError::Failed(m) => f.write_str(m),
        }
    }
}

/// Sends calls.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    /// Until the response head (connecting included).
    first_byte: Duration,
    /// The whole call.
    total: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("first_byte", &self.first_byte)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A client with these timeouts (in milliseconds), trusting Mozilla's root
    /// certificates and those of the PEM file `SSL_CERT_FILE` names, if any.
    pub fn new(first_byte_ms: u64, total_ms: u64) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let shown = std::path::Path::new(&path).display().to_string();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| anyhow::anyhow!("cannot read SSL_CERT_FILE {shown}: {e}"))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("cannot read SSL_CERT_FILE {shown}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("a certificate of SSL_CERT_FILE {shown}: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            first_byte: Duration::from_millis(first_byte_ms),
            total: Duration::from_millis(total_ms),
        })
    }

    /// Sends `request` and reads its whole answer.
    pub async fn send(&self, request: &OutboundRequest) -> Result<Response, CallError> {
        let deadline = tokio::time::Instant::now() + self.total;
        let head_deadline = tokio::time::Instant::now() + self.first_byte.min(self.total);
        let url = &request.url;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| CallError::Unreachable(format!("{url} is not a valid URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(CallError::Unreachable(format!(
                    "{url} is not an http:// or https:// URL"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| CallError::Unreachable(format!("{url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();

        let connect_budget = CONNECT_TIMEOUT.min(self.first_byte).min(self.total);
        let io = tokio::time::timeout(connect_budget, self.connect(&host, port, https))
            .await
            .map_err(|_| {
                CallError::Unreachable(format!(
                    "cannot connect to {host}:{port}: no connection within {} ms",
                    connect_budget.as_millis()
                ))
            })??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                CallError::Unreachable(format!("cannot talk HTTP to {host}:{port}: {e}"))
            })?;
        let driver = tokio::spawn(connection);

        let mut builder = hyper::Request::builder()
            .method(match request.method {
                Method::Get => hyper::Method::GET,
                Method::Post => hyper::Method::POST,
            })
            .uri(path)
            .header("host", authority);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let outgoing = builder
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| CallError::Failed(format!("cannot build the request to {url}: {e}")))?;
        let result = async {
            let head = tokio::time::timeout_at(head_deadline, sender.send_request(outgoing))
                .await
                .map_err(|_| {
                    CallError::Failed(format!(
                        "{url} did not answer within {} ms",
                        self.first_byte.min(self.total).as_millis()
                    ))
                })?
                .map_err(|e| CallError::Failed(format!("the call to {url} failed: {e}")))?;
            let status = head.status().as_u16();
            let body = tokio::time::timeout_at(
                deadline,
                Limited::new(head.into_body(), MAX_ANSWER_BYTES).collect(),
            )
            .await
            .map_err(|_| {
                CallError::Failed(format!(
                    "{url} did not finish its answer within {} ms",
                    self.total.as_millis()
                ))
            })?
            .map_err(|e| {
                CallError::Failed(format!(
                    "reading the answer of {url} failed (at most {MAX_ANSWER_BYTES} bytes are read): {e}"
                ))
            })?
            .to_bytes()
            .to_vec();
            Ok(Response { status, body })
        }
        .await;
        driver.abort();
        result
    }

    async fn connect(&self, host: &str, port: u16, https: bool) -> Result<Box<dyn Io>, CallError> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| CallError::Unreachable(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            CallError::Unreachable(format!("{host} is not a valid TLS server name: {e}"))
        })?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            CallError::Unreachable(format!("the TLS handshake with {host}:{port} failed: {e}"))
        })?;
        Ok(Box::new(tls))
    }
}
