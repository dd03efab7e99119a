//! Where the app is: the one address every request and check goes to (S2: the upstream
//! address is fixed by configuration and never taken from a request).

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use crate::error::{bad_setting, Result};

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

    /// The app's URI for a client's path and query: in origin form for HTTP/1.1 (the
    /// request line), absolute for HTTP/2 (its `:scheme` and `:authority`).
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>, absolute: bool) -> Uri {
        let target = path_and_query.map_or("/", |p| p.as_str());
        let mut parts = http::uri::Parts::default();
        if absolute {
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_urls_name_an_authority_and_maybe_a_prefix() {
        let plain = AppAddress::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(plain.dial(), "127.0.0.1:8000");
        assert_eq!(
            plain
                .uri(Some(&"/x?y=1".parse().unwrap()), true)
                .to_string(),
            "http://127.0.0.1:8000/x?y=1"
        );
        assert_eq!(plain.uri(Some(&"/x?y=1".parse().unwrap()), false), "/x?y=1");
        let prefixed = AppAddress::parse("http://localhost:9/v1/").unwrap();
        assert_eq!(prefixed.prefix, "/v1");
        assert_eq!(
            prefixed
                .uri(Some(&"/health".parse().unwrap()), false)
                .to_string(),
            "/v1/health"
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
