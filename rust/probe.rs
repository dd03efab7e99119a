//! One health check: an HTTP request to the app over loopback with a hard deadline.

use std::time::{Duration, Instant};

use ureq::Agent;

use crate::error::{bad_setting, Result};
use crate::settings::{HealthSettings, Method};
use crate::verdict::ProbeReport;

/// Sends health checks to one URL. Cheap to clone; each check gets a fresh connection,
/// so a connection the app dropped while idle can never fail a check.
#[derive(Clone)]
pub struct Probe {
    agent: Agent,
    url: String,
    method: Method,
}

impl Probe {
    pub fn new(app_url: &str, settings: &HealthSettings) -> Result<Probe> {
        // The app's URL may end in a path prefix the app is mounted under: checks go to the
        // prefix plus the health path, as proxied requests go to the prefix plus theirs.
        let base = app_url.trim_end_matches('/');
        let valid = base.strip_prefix("http://").is_some_and(|rest| {
            let host = rest.split('/').next().unwrap_or("");
            !host.is_empty() && !rest.contains(['?', '#', ' '])
        });
        if !valid {
            return Err(bad_setting(
                "app_url",
                "an http:// URL of host and port, and maybe a path, such as http://127.0.0.1:8000",
                format!("{app_url:?}"),
            ));
        }
        let config = Agent::config_builder()
            .timeout_global(Some(settings.timeout()))
            .http_status_as_error(false)
            .max_idle_connections(0)
            .max_redirects(0)
            // Checks go straight to the app, whatever HTTP_PROXY says.
            .proxy(None)
            .user_agent("runwarden-health-check")
            .build();
        Ok(Probe {
            agent: config.into(),
            url: format!("{base}{}", settings.health_path),
            method: settings.health_method,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send one check and wait for its status; the agent's deadline bounds the wait.
    pub fn run(&self) -> ProbeReport {
        let started = Instant::now();
        let result = match self.method {
            Method::Get => self.agent.get(&self.url).call(),
            Method::Post => self.agent.post(&self.url).send_empty(),
        };
        let latency = started.elapsed();
        match result {
            Ok(response) => ProbeReport {
                status: Some(response.status().as_u16()),
                error: None,
                latency,
                local: false,
            },
            Err(error) => ProbeReport {
                status: None,
                error: Some(describe(&error, latency)),
                latency,
                local: is_local(&error),
            },
        }
    }
}

/// Errors that say runwarden itself ran out of something (S6), not that the app failed:
/// no file descriptor (EMFILE, ENFILE), no buffer or memory (ENOBUFS, ENOMEM), no free
/// local port (EADDRNOTAVAIL).
const LOCAL_ERRNOS: [i32; 5] = [24, 23, 105, 12, 99];

fn is_local(error: &ureq::Error) -> bool {
    matches!(error, ureq::Error::Io(io) if io.raw_os_error().is_some_and(|e| LOCAL_ERRNOS.contains(&e)))
}

fn describe(error: &ureq::Error, latency: Duration) -> String {
    if is_local(error) {
        return format!("runwarden could not send the check: {error}");
    }
    match error {
        ureq::Error::Timeout(_) => format!("timed out after {:.3}s", latency.as_secs_f64()),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset by the app".to_owned(),
            _ => format!("i/o error: {io}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    fn settings(timeout: f64) -> HealthSettings {
        HealthSettings {
            timeout_seconds: timeout,
            ..Default::default()
        }
    }

    /// A one-shot server that answers the first request with `response` (None: never answers).
    fn serve_once(response: Option<&'static str>) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            match response {
                Some(text) => conn.write_all(text.as_bytes()).unwrap(),
                None => thread::sleep(Duration::from_millis(800)),
            }
            request
        });
        (url, handle)
    }

    #[test]
    fn passes_on_2xx_and_sends_the_configured_path() {
        let (url, server) = serve_once(Some("HTTP/1.1 204 No Content\r\n\r\n"));
        let probe = Probe::new(&url, &settings(2.0)).unwrap();
        let report = probe.run();
        assert_eq!(report.status, Some(204));
        assert!(report.passed());
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /health HTTP/1.1"), "{request}");
    }

    #[test]
    fn a_500_is_a_status_not_an_error() {
        let (url, _server) = serve_once(Some(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
        ));
        let report = Probe::new(&url, &settings(2.0)).unwrap().run();
        assert_eq!(report.status, Some(500));
        assert!(!report.passed());
    }

    #[test]
    fn post_method_is_used_when_set() {
        let (url, server) = serve_once(Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        let s = HealthSettings {
            health_method: Method::Post,
            health_path: "/healthz".into(),
            ..settings(2.0)
        };
        assert!(Probe::new(&url, &s).unwrap().run().passed());
        assert!(server.join().unwrap().starts_with("POST /healthz HTTP/1.1"));
    }

    #[test]
    fn a_hung_app_times_out_at_the_deadline() {
        let (url, _server) = serve_once(None);
        let report = Probe::new(&url, &settings(0.2)).unwrap().run();
        assert_eq!(report.status, None);
        assert!(report.error.unwrap().starts_with("timed out"));
        assert!(
            report.latency < Duration::from_millis(700),
            "{:?}",
            report.latency
        );
    }

    #[test]
    fn connection_refused_is_reported() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let report = Probe::new(&format!("http://127.0.0.1:{port}"), &settings(1.0))
            .unwrap()
            .run();
        assert_eq!(report.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn running_out_of_file_descriptors_is_runwardens_failure_not_the_apps() {
        let emfile = ureq::Error::Io(std::io::Error::from_raw_os_error(24));
        assert!(is_local(&emfile));
        assert!(describe(&emfile, Duration::ZERO).starts_with("runwarden could not send"));
        let refused = ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!is_local(&refused));
    }

    #[test]
    fn bad_app_urls_are_refused_with_the_setting_named() {
        for url in [
            "127.0.0.1:8000",
            "https://x:1",
            "http://",
            "http://h:1/p?q=1",
        ] {
            let err = Probe::new(url, &settings(1.0)).err().unwrap();
            assert!(
                err.to_string().starts_with("app_url must be"),
                "{url}: {err}"
            );
        }
        assert!(Probe::new("http://127.0.0.1:8000/", &settings(1.0)).is_ok());
        let prefixed = Probe::new("http://127.0.0.1:8000/v1/", &settings(1.0)).unwrap();
        assert_eq!(prefixed.url(), "http://127.0.0.1:8000/v1/health");
    }
}
