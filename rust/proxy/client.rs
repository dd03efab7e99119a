//! The client towards the app: hyper-util's pooled client, on a connector that always
//! dials the configured app (S2: the upstream address is never taken from a request).
//!
//! HTTP/1.1 keeps a pool of keep-alive connections; `--app-protocol h2c` speaks HTTP/2
//! with prior knowledge over one multiplexed connection. A request that found its pooled
//! connection closed before it was written is retried on a fresh one (hyper-util's
//! `retry_canceled_requests`); one that was written is never sent twice.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::upload::Outbound;
use crate::error::{bad_setting, Result};
use crate::settings::AppProtocol;

/// How long an idle pooled connection to the app is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Dials the app, whatever the request's URI says.
#[derive(Clone)]
pub struct Dial {
    address: Arc<str>,
}

impl tower::Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let address = Arc::clone(&self.address);
        Box::pin(async move {
            let stream = TcpStream::connect(&*address).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Where the app is: its authority, and the path prefix it is mounted under.
#[derive(Clone, Debug)]
pub struct AppAddress {
    pub authority: Authority,
    /// "" or "/prefix" (no trailing slash).
    pub prefix: String,
}

impl AppAddress {
    /// `http://HOST:PORT[/PREFIX]`; the error names `app_url`.
    pub fn parse(app_url: &str) -> Result<AppAddress> {
        let bad = || {
            bad_setting(
                "app_url",
                "an http:// URL of host and port, and maybe a path, such as http://127.0.0.1:8000",
                format!("{app_url:?}"),
            )
        };
        let trimmed = app_url.trim_end_matches('/');
        let rest = trimmed.strip_prefix("http://").ok_or_else(bad)?;
        if rest.contains(['?', '#', ' ', '@']) {
            return Err(bad());
        }
        let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority: Authority = host.parse().map_err(|_| bad())?;
        if authority.host().is_empty() {
            return Err(bad());
        }
        Ok(AppAddress {
            authority,
            prefix: prefix.to_owned(),
        })
    }

    /// host:port, as a socket address is dialled.
    pub fn dial(&self) -> String {
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host();
        format!("{host}:{port}")
    }

    /// The app's URI for a client's path and query.
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let target = path_and_query.map_or("/", |p| p.as_str());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(if self.prefix.is_empty() {
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            format!("{}{target}", self.prefix)
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        });
        Uri::from_parts(parts).unwrap_or_default()
    }
}

pub type AppClient = Client<Dial, Outbound>;

pub fn build(address: &AppAddress, protocol: AppProtocol, max_idle: usize) -> AppClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(max_idle)
        .set_host(false)
        .retry_canceled_requests(true)
        // A response head is bounded as a request's is (S6): an app's endless head is a 502.
        .http1_max_buf_size(super::MAX_HEAD_BYTES)
        .http2_only(protocol == AppProtocol::H2c);
    builder.build(Dial {
        address: address.dial().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_urls_name_an_authority_and_maybe_a_prefix() {
        let plain = AppAddress::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(plain.dial(), "127.0.0.1:8000");
        assert_eq!(
            plain.uri(Some(&"/x?y=1".parse().unwrap())).to_string(),
            "http://127.0.0.1:8000/x?y=1"
        );
        let prefixed = AppAddress::parse("http://localhost:9/v1/").unwrap();
        assert_eq!(prefixed.prefix, "/v1");
        assert_eq!(
            prefixed.uri(Some(&"/health".parse().unwrap())).to_string(),
            "http://localhost:9/v1/health"
        );
        for bad in [
            "127.0.0.1:8000",
            "https://x:1",
            "http://",
            "http://h:1/p?q=1",
            "http://u@h:1",
        ] {
            let err = AppAddress::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("app_url must be"),
                "{bad}: {err}"
            );
        }
    }
}
