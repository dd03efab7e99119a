//! `/metrics` (SPEC H8, A, G4, Q5): one registry for the proxy's, the checks' and the GPUs'
//! series, in Prometheus' text format.
//!
//! The crate is tikv's `prometheus`, not `prometheus-client`: the latter writes only
//! OpenMetrics, which appends `_total` to every counter, and so would rename
//! dcgm-exporter's counters (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`) and break the
//! dashboards `--gpu-metrics dcgm` exists for. Counters are counted where they happen,
//! through the core's event observer (checks, GPU findings) or on the data plane's hot path
//! (one atomic add per request); the runner's state, the in-flight count and the GPUs'
//! latest readings are read from their owners when scraped. Names follow Prometheus'
//! conventions (base units, `_total`), and there is no `_created` series.

mod gpu;
mod live;

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::verdict::Event;

pub use gpu::GpuSeries;
pub use live::Live;

/// Seconds, for proxied requests: from a millisecond (a cached answer) to a long generation.
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
const CHECK_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Statuses the hot path counts without a label lookup: 100-599, by who answered.
const STATUSES: usize = 500;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Who answered a proxied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    App,
    Runwarden,
    /// The client left before its answer (recorded as status 499).
    Client,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Runwarden => "runwarden",
            Source::Client => "client",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    checks: IntCounterVec,
    check_duration: Histogram,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    latency: Histogram,
    queue_wait: Histogram,
    gpu_findings: IntCounterVec,
    gpu_sample_duration: Gauge,
    gpu_monitoring: Gauge,
    gpu: Arc<GpuSeries>,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("each series is registered once, under its own name");
    metric
}

impl Metrics {
    /// The registry, with `live` read when scraped; `python` is the interpreter's version
    /// for `runwarden_build_info`.
    pub fn new(live: Live, gpu: Arc<GpuSeries>, python: &str) -> Arc<Metrics> {
        let registry = Registry::new();
        let build = registered(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "runwarden_build_info",
                    "runwarden's version and the Python it runs on (always 1)",
                ),
                &["python", "version"],
            )
            .expect("valid"),
        );
        build
            .with_label_values(&[python, env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let metrics = Metrics {
            checks: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "runwarden_checks_total",
                        "Finished health checks, by result and by how the scheduler counted them (H4, H9)",
                    ),
                    &["counted", "outcome"],
                )
                .expect("valid"),
            ),
            check_duration: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "runwarden_check_duration_seconds",
                        "Health check latency, pass or fail",
                    )
                    .buckets(CHECK_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "runwarden_proxied_requests_total",
                        "Requests answered on the proxy port, by status and by who answered (app, runwarden, or the client leaving: 499)",
                    ),
                    &["source", "status"],
                )
                .expect("valid"),
            ),
            by_status: (0..STATUSES * 2).map(|_| OnceLock::new()).collect(),
            latency: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "runwarden_proxied_request_duration_seconds",
                        "Proxied requests, from their head's arrival to the end of their response (or the client leaving)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            queue_wait: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "runwarden_queue_wait_seconds",
                        "Time requests that found no place at the app waited for one (Q2, Q5); those let in at once are not observed",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            gpu_findings: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "runwarden_gpu_findings_total",
                        "GPU warnings and faults found (SPEC G2, G3), by rule and severity",
                    ),
                    &["rule", "severity"],
                )
                .expect("valid"),
            ),
            gpu_sample_duration: registered(
                &registry,
                Gauge::new(
                    "runwarden_gpu_sample_duration_seconds",
                    "What the last NVML sample of the watched GPUs cost",
                )
                .expect("valid"),
            ),
            gpu_monitoring: registered(
                &registry,
                Gauge::new(
                    "runwarden_gpu_monitoring",
                    "1 while GPU monitoring runs, 0 when it is off (no NVML driver)",
                )
                .expect("valid"),
            ),
            gpu: Arc::clone(&gpu),
            registry,
        };
        metrics
            .registry
            .register(Box::new(live))
            .expect("the live series are registered once");
        metrics
            .registry
            .register(Box::new(gpu::Collector(gpu)))
            .expect("the GPU series are registered once");
        Arc::new(metrics)
    }

    /// Count what the core's threads report: checks (H8) and the GPUs (G4).
    pub fn observe(&self, event: &Event) {
        match event {
            Event::Check(outcome) => {
                let result = if outcome.report.passed() {
                    "pass"
                } else {
                    "fail"
                };
                self.checks
                    .with_label_values(&[outcome.counted.as_str(), result])
                    .inc();
                self.check_duration
                    .observe(outcome.report.latency.as_secs_f64());
            }
            Event::GpuSamples { samples, cost } => {
                self.gpu_sample_duration.set(cost.as_secs_f64());
                self.gpu.samples(samples);
            }
            Event::GpuFinding(found) => {
                let finding = &found.finding;
                self.gpu_findings
                    .with_label_values(&[finding.rule, finding.severity.as_str()])
                    .inc();
                if let (Some(gpu), Some(xid)) = (finding.gpu, finding.xid) {
                    self.gpu.xid(gpu, xid);
                }
            }
            Event::GpuMonitoring { enabled, .. } => {
                self.gpu_monitoring.set(if *enabled { 1.0 } else { 0.0 });
            }
            _ => {}
        }
    }

    /// One answered request (the hot path: an array index and an atomic add).
    pub fn request(&self, status: u16, source: Source) {
        let index = usize::from(status).wrapping_sub(100);
        let slot = match source {
            Source::App if index < STATUSES => Some(index),
            Source::Runwarden if index < STATUSES => Some(STATUSES + index),
            _ => None,
        };
        let counter = |status: u16| {
            self.requests
                .with_label_values(&[source.as_str(), &status.to_string()])
        };
        match slot {
            Some(slot) => self.by_status[slot].get_or_init(|| counter(status)).inc(),
            None => counter(status).inc(),
        }
    }

    /// A proxied request ended after `seconds` (a monotonic clock, sub-millisecond).
    /// Q5: a request waited `waited` for its place at the app.
    pub fn observe_queue_wait(&self, waited: std::time::Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The text `/metrics` answers with.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail; a family the encoder refused would be left out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
