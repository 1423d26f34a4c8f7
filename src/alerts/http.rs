//! A minimal one-shot HTTP/1.1 POST client for alerts and the `printgate gpio` CLI: one
//! connection per request (alerts are rare), `https` through rustls with the ring provider
//! (passed explicitly) and the system's certificate store, plain `http` for the LAN.

use axum::http::{HeaderValue, Method, Request, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// The answer: status and (at most 64 KiB of) body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// What went wrong, in words for a log line or the settings page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("\"{0}\" is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot connect to {0}: {1}; check the URL and that the server is reachable")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("no answer within {0} s; check the URL and the network")]
    Timeout(u64),
    #[error("HTTP error: {0}")]
    Protocol(String),
}

/// TLS client settings: ring provider, system roots (built once).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls_platform_verifier::BuilderVerifierExt;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_platform_verifier()
                .map_err(|e| e.to_string())?
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(cfg))
        })
        .clone()
}

/// Check that TLS can be set up (the system's CA store is readable).
pub fn check_tls() -> Result<(), String> {
    tls_config().map(|_| ())
}

/// POST `body` to `url` with `headers`; the whole exchange is bounded by `timeout`.
pub async fn post(
    url: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<HttpAnswer, HttpError> {
    tokio::time::timeout(timeout, post_inner(url, headers, content_type, body))
        .await
        .unwrap_or(Err(HttpError::Timeout(timeout.as_secs())))
}

async fn post_inner(
    url: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: Vec<u8>,
) -> Result<HttpAnswer, HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.into()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HttpError::BadUrl(url.into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| HttpError::BadUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| HttpError::Connect(format!("{host}:{port}"), e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::USER_AGENT,
            concat!("printgate/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        let v = HeaderValue::from_str(value)
            .map_err(|_| HttpError::Protocol(format!("header {name} has an invalid value")))?;
        req = req.header(*name, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| HttpError::Protocol(e.to_string()))?;

    if https {
        let cfg = tls_config().map_err(|e| HttpError::Tls(host.clone(), e))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| HttpError::Tls(host.clone(), e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls(host.clone(), e.to_string()))?;
        exchange(TokioIo::new(tls), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<T>(io: TokioIo<T>, req: Request<Full<Bytes>>) -> Result<HttpAnswer, HttpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()));
    let out = match res {
        Ok(res) => {
            let status = res.status().as_u16();
            let limited = http_body_util::Limited::new(res.into_body(), 64 * 1024);
            let body = match limited.collect().await {
                Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
                Err(_) => String::new(),
            };
            Ok(HttpAnswer { status, body })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}
