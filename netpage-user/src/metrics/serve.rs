//! The metrics' HTTP endpoint: `GET /metrics` answers with a scrape made at that moment,
//! in the OpenMetrics text format; other paths get 404 and other methods 405. HTTP/1
//! only, one task per connection, the scrape itself on the blocking pool (reading a
//! large table takes a while).

use std::{convert::Infallible, future::Future, io, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape answers: the exposition text.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `scrape` on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    scrape: Scrape,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, scrape.clone()));
            // A client that goes away mid-answer is its own business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    scrape: Scrape,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "netpage serves /metrics only\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ));
    }
    let body = tokio::task::spawn_blocking(move || scrape())
        .await
        .unwrap_or_else(|e| crate::metrics::unreadable(&format!("the scrape failed: {e}")));
    Ok(reply(StatusCode::OK, OPENMETRICS, body))
}
