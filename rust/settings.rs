//! The core's settings, health checks (SPEC H) and GPU monitoring (SPEC G): each declared
//! once here, with its default, bounds and help. The command line, the environment,
//! `/status` and the docs are built from the `SPECS` tables; values are validated (H7).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::{bad_setting, Result};
use crate::policy::SUSTAINABLE_WARNINGS;
use crate::setting::{choice, settings, Kind};

/// The NVML library loaded when `nvml_library` is unset: the driver's, found by the loader.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

choice! {
    /// The method of a health check.
    pub enum Method { Get = "GET", Post = "POST" }
}

choice! {
    /// How a health check asks (H): an HTTP request to the health path, or the standard gRPC
    /// health protocol (`grpc.health.v1.Health/Check`), as Kubernetes' gRPC probe does.
    pub enum CheckProtocol { Http = "http", Grpc = "grpc" }
}

choice! {
    /// How runwarden speaks to the app (P1): HTTP/1.1, or HTTP/2 in cleartext with prior
    /// knowledge (a gRPC server, Triton's gRPC port).
    pub enum AppProtocol { Http1 = "http1", H2c = "h2c" }
}

choice! {
    /// How /metrics names the GPU series (G4).
    pub enum GpuMetrics { Dcgm = "dcgm", Runwarden = "runwarden", Off = "off" }
}

const POSITIVE: Kind = Kind::Number {
    min: 0.0,
    strict: true,
};
const NON_NEGATIVE: Kind = Kind::Number {
    min: 0.0,
    strict: false,
};

settings! {
    /// Health-check settings. Build with `HealthSettings::default()`, then `validate()`.
    pub struct HealthSettings {
        /// failures are recorded but not counted while the runner is younger than this (H4)
        start_period_seconds: u64 = 30, Kind::Int { min: 0 };
        /// a check not answered by then has failed; the request is abandoned
        timeout_seconds: f64 = 5.0, POSITIVE;
        /// consecutive counted failures that replace the runner (H4)
        failure_threshold: u32 = 3, Kind::Int { min: 1 };
        /// run checks on a schedule; when false, only on request (H5)
        call_regularly: bool = true, Kind::Bool;
        /// the schedule's period (H3); before the first pass, see startup_check_seconds
        period_seconds: f64 = 15.0, POSITIVE;
        /// until the first check passes, checks run this often instead of every period_seconds, so the runner is ready soon after its app; past the start period they are start-up probes between the regular checks, and only the regular ones count (K3)
        startup_check_seconds: f64 = 0.5, POSITIVE;
        /// the app's startup budget; the start period is raised to it when longer (H1)
        startup_timeout_seconds: f64 = 0.0, NON_NEGATIVE;
        /// the app's health route
        health_path: String = "/health".to_owned(), Kind::Path;
        /// the method of a check
        health_method: Method = Method::Get, Kind::Choice(Method::WORDS);
        /// http: a request to health_path; grpc: grpc.health.v1.Health/Check over HTTP/2, passing on SERVING
        check_protocol: CheckProtocol = CheckProtocol::Http, Kind::Choice(CheckProtocol::WORDS);
        /// the service a gRPC check asks about; empty: the server as a whole
        grpc_health_service: String = String::new(), Kind::Text;
        /// checks other than start-up probes first hold new requests, wait for those at the app to finish (at most drain_timeout_seconds, else the check is skipped as busy), and run alone: for thorough checks such as a test inference (Q1); unset: on when call_regularly is off
        exclusive_checks: Option<bool> = None, Kind::OptionalBool;
        /// a failed check is not counted while requests in flight are moving bytes (H9)
        allow_on_busy: bool = false, Kind::Bool;
        /// replace when in-flight requests move no byte for this long (H9)
        stall_seconds: Option<f64> = None, Kind::OptionalNumber { min: 0.0, strict: true };
        /// gateway (H5) and extra (R4) triggers start a new check at most this often; within it they get the latest outcome
        trigger_interval_seconds: f64 = 1.0, NON_NEGATIVE;
        /// check outcomes kept for /status (H8)
        history_size: usize = 100, Kind::Int { min: 1 };
    }
}

settings! {
    /// GPU monitoring settings (SPEC G): each declared once, named as its option.
    pub struct GpuSettings {
        /// the GPUs to watch: indices, GPU-… or MIG-… UUIDs (a MIG device means its GPU), or all; unset: the supervised app's CUDA_VISIBLE_DEVICES, else NVIDIA_VISIBLE_DEVICES, else runwarden's CUDA_VISIBLE_DEVICES, else all (G5)
        gpus: Option<Vec<String>> = None, Kind::GpuSelectors;
        /// NVML that cannot load or start, or fewer GPUs than asked for, stop start-up with gpu_fault's code (G6)
        gpu_required: bool = false, Kind::Bool;
        /// seconds between NVML samples of every GPU
        gpu_sample_seconds: f64 = 5.0, POSITIVE;
        /// an NVML call that does not return within this is a GPU fault (G2)
        nvml_watchdog_seconds: f64 = 10.0, POSITIVE;
        /// the NVML library to load; unset: libnvidia-ml.so.1, found by the dynamic loader
        nvml_library: Option<String> = None, Kind::OptionalText;
        /// a GPU hotter than this is a warning (G3)
        gpu_temperature_warning_celsius: u32 = 85, Kind::Int { min: 0 };
        /// XIDs that replace the runner (G2)
        gpu_fatal_xids: BTreeSet<u64> = [48, 64, 74, 79, 95, 119, 120, 140].into(), Kind::Xids;
        /// XIDs that warn (G3): ECC recording (63, 92, 94), power (54), micro-controller (61, 62), firmware (38), display and memory interface (56-58), C2C link (121), power/thermal (150)
        gpu_warning_xids: BTreeSet<u64> = [38, 54, 56, 57, 58, 61, 62, 63, 92, 94, 121, 150].into(), Kind::Xids;
        /// XIDs ignored: application errors (109: a context-switch timeout)
        gpu_ignored_xids: BTreeSet<u64> = [13, 31, 43, 45, 68, 109].into(), Kind::Xids;
        /// retired pages that replace the runner (G2)
        gpu_retired_pages_fatal: u64 = 63, Kind::Int { min: 1 };
        /// uncorrectable remapped rows that replace the runner (G2)
        gpu_remapped_rows_fatal: u64 = 512, Kind::Int { min: 1 };
        /// warnings made fatal once they have held this many seconds (G3)
        gpu_promote_warnings: BTreeMap<String, f64> = BTreeMap::new(), Kind::Promotions;
        /// seconds between runs of the compute canary, a known-answer CUDA test on each watched GPU (also after a failed check and on POST /canary); off: only then (G7)
        gpu_canary_seconds: Option<f64> = Some(60.0), Kind::OptionalNumber { min: 0.0, strict: true };
        /// a canary run not finished within this is a GPU fault, canary_hang (G7)
        gpu_canary_timeout_seconds: f64 = 5.0, POSITIVE;
        /// the CUDA driver the canary loads; unset: libcuda.so.1, found by the dynamic loader; an empty string turns the canary off
        cuda_library: Option<String> = None, Kind::OptionalText;
        /// GPU series in /metrics: named as dcgm-exporter names them, as runwarden_gpu_*, or none (for a node whose dcgm-exporter is scraped already)
        gpu_metrics: GpuMetrics = GpuMetrics::Dcgm, Kind::Choice(GpuMetrics::WORDS);
    }
}

settings! {
    /// The data plane's settings (SPEC P, S, D): both ports, the limits on clients and on
    /// the app, and the drain.
    pub struct ProxySettings {
        /// the proxy's listen address
        host: String = "0.0.0.0".to_owned(), Kind::Host;
        /// the proxy's listen port
        port: u16 = 8080, Kind::Port;
        /// the admin port's listen address (/livez /readyz /status /metrics); 0.0.0.0 lets the kubelet's probes and Prometheus' scrapes reach it by the pod's IP; it is read-only and /status carries no secret (A)
        admin_host: String = "0.0.0.0".to_owned(), Kind::Host;
        /// the admin port
        admin_port: u16 = 8081, Kind::Port;
        /// how runwarden speaks to the app: http1 (HTTP/1.1), or h2c (HTTP/2 in cleartext, for gRPC servers); clients may use either
        app_protocol: AppProtocol = AppProtocol::Http1, Kind::Choice(AppProtocol::WORDS);
        /// header that asks for a check (H5, H6)
        check_header: String = "x-fal-runner-health-check".to_owned(), Kind::HeaderName;
        /// peers whose check header triggers a check (H5); from others it is dropped
        check_trusted_sources: Vec<String> = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()], Kind::Networks;
        /// a request head must arrive within this of the connection or its first byte (S6)
        header_timeout_seconds: f64 = 10.0, POSITIVE;
        /// an idle client connection is closed after this (S6)
        keep_alive_seconds: f64 = 75.0, POSITIVE;
        /// a request body that sends nothing for this long is answered 408 and its request at the app aborted (nginx's client_body_timeout)
        client_body_timeout_seconds: f64 = 60.0, POSITIVE;
        /// a client that takes no byte of its response (on HTTP/2: opens no window for it) for this long is disconnected (nginx's send_timeout)
        send_timeout_seconds: f64 = 60.0, POSITIVE;
        /// a WebSocket or other upgraded connection that moves no byte either way for this long is closed
        tunnel_idle_timeout_seconds: f64 = 300.0, POSITIVE;
        /// client connections held at once on the proxy port (S6); auto: (fd limit - 256) / 2
        max_connections: Option<usize> = None, Kind::Auto { min: 1 };
        /// requests at the app at once, each on its own connection with http1; more wait in arrival order; auto: a quarter of the fd limit the app is given, at most 1024, so no client can exhaust the app's fds
        max_app_connections: Option<usize> = None, Kind::Auto { min: 1 };
        /// requests at the app at once; more wait in one queue in arrival order (Q2); 0: no limit but max_app_connections
        max_concurrency: usize = 0, Kind::Int { min: 0 };
        /// requests that may wait for a place when max_concurrency is set; more are answered 503 with x-runwarden-overloaded: queue_full (Q2); auto: 4 × max_concurrency
        max_queue: Option<usize> = None, Kind::Auto { min: 0 };
        /// the longest a request waits for a place when max_concurrency is set; then it is answered 503 with x-runwarden-overloaded: queue_timeout (Q2)
        queue_timeout_seconds: f64 = 30.0, POSITIVE;
        /// the longest a forwarded request may take, from forwarding to its response's end: then the client gets 504 (or, once its response has started, a cut response), the app's request is aborted, and one extra check runs (Q3); off: no limit
        request_timeout_seconds: Option<f64> = None, Kind::OptionalNumber { min: 0.0, strict: true };
        /// how long in-flight requests may finish when draining (D2)
        drain_timeout_seconds: f64 = 30.0, NON_NEGATIVE;
        /// log every proxied request (client, request line, status, duration) at info on the runwarden.access logger
        access_log: bool = false, Kind::Bool;
        /// the data plane's threads; 1 suits a sidecar beside a GPU server
        proxy_threads: usize = 1, Kind::Int { min: 1 };
    }
}

impl ProxySettings {
    /// Check every setting; the error names the first bad one.
    pub fn validate(self) -> Result<Self> {
        self.check_each()?;
        if self.port == self.admin_port && self.host == self.admin_host {
            return Err(bad_setting(
                "admin_port",
                "another port than the proxy's",
                self.admin_port,
            ));
        }
        Ok(self)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_seconds)
    }
}

impl GpuSettings {
    /// Check every setting and the rules across them; the error names the setting.
    pub fn validate(self) -> Result<Self> {
        self.check_each()?;
        if let Some(both) = self
            .gpu_fatal_xids
            .intersection(&self.gpu_ignored_xids)
            .next()
        {
            return Err(bad_setting(
                "gpu_ignored_xids",
                "disjoint from gpu_fatal_xids",
                format!("XID {both} in both"),
            ));
        }
        if let Some(rule) = self
            .gpu_promote_warnings
            .keys()
            .find(|rule| !SUSTAINABLE_WARNINGS.contains(&rule.as_str()))
        {
            return Err(bad_setting(
                "gpu_promote_warnings",
                format!("keyed by {}", SUSTAINABLE_WARNINGS.join(", ")),
                format!("{rule:?}"),
            ));
        }
        Ok(self)
    }

    /// G7: the canary's settings, or None when it is off.
    pub fn canary(&self) -> Option<crate::canary::CanarySettings> {
        let library = self
            .cuda_library
            .clone()
            .unwrap_or_else(|| crate::canary::DEFAULT_LIBRARY.to_owned());
        (!library.is_empty()).then(|| crate::canary::CanarySettings {
            period: self.gpu_canary_seconds.map(Duration::from_secs_f64),
            timeout: Duration::from_secs_f64(self.gpu_canary_timeout_seconds),
            library,
        })
    }

    /// The library to load.
    pub fn library(&self) -> &str {
        self.nvml_library.as_deref().unwrap_or(DEFAULT_LIBRARY)
    }
}

impl HealthSettings {
    /// Check every setting; the error names the first bad one (H7).
    pub fn validate(self) -> Result<Self> {
        self.check_each()?;
        Ok(self)
    }

    /// H1: the start period is raised to the app's startup timeout when that is longer.
    pub fn effective_start_period(&self) -> Duration {
        Duration::from_secs_f64(
            (self.start_period_seconds as f64).max(self.startup_timeout_seconds),
        )
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(self.period_seconds)
    }

    /// K3: the interval before the first pass (never longer than the period).
    pub fn startup_interval(&self) -> Duration {
        Duration::from_secs_f64(self.startup_check_seconds.min(self.period_seconds))
    }

    pub fn stall(&self) -> Option<Duration> {
        self.stall_seconds.map(Duration::from_secs_f64)
    }

    /// Q1: whether checks run alone (unset: when they are not called regularly).
    pub fn exclusive(&self) -> bool {
        self.exclusive_checks.unwrap_or(!self.call_regularly)
    }

    pub fn trigger_interval(&self) -> Duration {
        Duration::from_secs_f64(self.trigger_interval_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;
    use crate::setting::Value;

    #[test]
    fn h7_defaults_are_the_specs() {
        let s = HealthSettings::default().validate().unwrap();
        assert_eq!(s.start_period_seconds, 30);
        assert_eq!(s.timeout_seconds, 5.0);
        assert_eq!(s.failure_threshold, 3);
        assert!(s.call_regularly);
        assert_eq!(s.period_seconds, 15.0);
        assert_eq!(s.health_path, "/health");
    }

    #[test]
    fn h7_bad_settings_name_the_setting() {
        let cases: Vec<(HealthSettings, &str)> = vec![
            (
                HealthSettings {
                    failure_threshold: 0,
                    ..Default::default()
                },
                "failure_threshold",
            ),
            (
                HealthSettings {
                    timeout_seconds: 0.0,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    timeout_seconds: -1.0,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    timeout_seconds: f64::NAN,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    period_seconds: 0.0,
                    ..Default::default()
                },
                "period_seconds",
            ),
            (
                HealthSettings {
                    startup_timeout_seconds: -3.0,
                    ..Default::default()
                },
                "startup_timeout_seconds",
            ),
            (
                HealthSettings {
                    health_path: "health".into(),
                    ..Default::default()
                },
                "health_path",
            ),
            (
                HealthSettings {
                    stall_seconds: Some(0.0),
                    ..Default::default()
                },
                "stall_seconds",
            ),
        ];
        for (settings, name) in cases {
            match settings.validate() {
                Err(CoreError::Setting { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected a {name} error, got {other:?}"),
            }
        }
        let err = HealthSettings {
            failure_threshold: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failure_threshold must be an integer >= 1, got 0"
        );
    }

    #[test]
    fn h1_start_period_is_raised_to_the_startup_timeout() {
        let s = HealthSettings {
            startup_timeout_seconds: 120.5,
            ..Default::default()
        };
        assert_eq!(s.effective_start_period(), Duration::from_secs_f64(120.5));
        let s = HealthSettings {
            startup_timeout_seconds: 10.0,
            ..Default::default()
        };
        assert_eq!(s.effective_start_period(), Duration::from_secs(30));
    }

    #[test]
    fn h7_method_parses_case_insensitively() {
        let mut s = HealthSettings::default();
        s.set("health_method", Value::Text("post".into())).unwrap();
        assert_eq!(s.health_method, Method::Post);
        assert!(s
            .set("health_method", Value::Text("DELETE".into()))
            .is_err());
    }

    #[test]
    fn h7_set_by_name_checks_the_kind_and_names_unknown_settings() {
        let mut s = HealthSettings::default();
        let err = s.set("failure_threshold", Value::Int(0)).unwrap_err();
        assert_eq!(err.setting(), Some("failure_threshold"));
        let err = s.set("failure_treshold", Value::Int(3)).unwrap_err();
        assert_eq!(err.setting(), Some("failure_treshold"));
        assert!(err
            .to_string()
            .contains("known settings: start_period_seconds"));
        assert_eq!(HealthSettings::SPECS.len(), s.values().len());
    }
}
