//! The HTTP listener: `/metrics` (Prometheus text format), `/health` (the process serves) and
//! `/ready` (it should get traffic). Answers come from state the pooler already keeps: a probe
//! never opens a server connection.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What the endpoints report.
pub trait Status: Send + Sync + 'static {
    /// The metrics in Prometheus text format.
    fn metrics(&self) -> String;
    /// Ok when the pooler should receive clients; else a short reason.
    fn ready(&self) -> Result<(), String>;
}

/// Serves until the future is dropped.
pub async fn serve(listener: TcpListener, status: Arc<dyn Status>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(answer(&*status, &req)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // Bounded: a scraper that stalls does not keep a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(60), served).await;
        });
    }
}

fn answer(status: &dyn Status, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics(),
        ),
        "/health" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => match status.ready() {
            Ok(()) => reply(
                StatusCode::OK,
                "application/json",
                "{\"ready\":true}\n".into(),
            ),
            Err(reason) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                format!("{{\"ready\":false,\"reason\":{}}}\n", json_string(&reason)),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("a valid header value"),
    );
    r
}

fn json_string(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(super::json_string("a \"b\"\n"), "\"a \\\"b\\\"\\u000a\"");
    }
}
