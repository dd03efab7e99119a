//! The series read from their owners when scraped: the runner's state, the requests in
//! flight, the door's places and queue (Q5), the ports' connections. No copy of any of them is kept here.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::canary::Canary;
use crate::door::Refusal;
use crate::proxy::listener::Port;
use crate::runner::RunnerHandle;

const STATES: [&str; 5] = ["starting", "ready", "replacing", "stopping", "stopped"];

pub struct Live {
    runner: RunnerHandle,
    ports: Vec<Arc<Port>>,
    canary: Option<Arc<Canary>>,
    descs: Vec<Desc>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const FAMILIES: [Family; 13] = [
    Family {
        name: "runwarden_state",
        help: "The runner's state: 1 for the current one",
        kind: MetricType::GAUGE,
        labels: &["state"],
    },
    Family {
        name: "runwarden_check_consecutive_failures",
        help: "Counted consecutive failed health checks; failure_threshold of them replace (H4)",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_requests_in_flight",
        help: "Proxied requests admitted and not yet answered: those at the app and those waiting at the door (tunnels and streams included)",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_draining",
        help: "1 while draining (replacement or clean stop), else 0",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_connections",
        help: "Client connections open, by port",
        kind: MetricType::GAUGE,
        labels: &["port"],
    },
    Family {
        name: "runwarden_connections_refused_total",
        help: "Clients answered 503 because every connection the port may hold was being answered (S6)",
        kind: MetricType::COUNTER,
        labels: &["port"],
    },
    Family {
        name: "runwarden_requests_at_app",
        help: "Proxied requests holding a place at the app (Q2; tunnels and streams included)",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_queue_depth",
        help: "Requests waiting for a place at the app (Q2), or held while a check runs alone (Q1): the autoscaling signal",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_max_concurrency",
        help: "Places at the app: max_concurrency, or max_app_connections when it is 0",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Family {
        name: "runwarden_requests_refused_total",
        help: "Requests runwarden answered 503 at the door, by reason: queue_full, queue_timeout (Q2), draining (Q6); none reached the app",
        kind: MetricType::COUNTER,
        labels: &["reason"],
    },
    Family {
        name: "runwarden_canary_runs_total",
        help: "Compute canary runs, one per watched GPU per round (G7)",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Family {
        name: "runwarden_canary_failures_total",
        help: "Compute canary runs that did not pass, by outcome: mismatch, hang, error, unavailable, busy (G7)",
        kind: MetricType::COUNTER,
        labels: &["outcome"],
    },
    Family {
        name: "runwarden_canary_duration_seconds_total",
        help: "Time the compute canary's runs took, summed (G7)",
        kind: MetricType::COUNTER,
        labels: &[],
    },
];

impl Live {
    pub fn new(runner: RunnerHandle, ports: Vec<Arc<Port>>, canary: Option<Arc<Canary>>) -> Live {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                let labels = f.labels.iter().map(|l| (*l).to_owned()).collect();
                Desc::new(f.name.into(), f.help.into(), labels, Default::default()).expect("valid")
            })
            .collect();
        Live {
            runner,
            ports,
            canary,
            descs,
        }
    }
}

/// One sample: its labels and its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// A family of samples, each a label set and a value.
pub fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = Sample>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    let metrics = samples
        .into_iter()
        .map(|(labels, value)| {
            let mut metric = Metric::default();
            metric.set_label(
                labels
                    .into_iter()
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.to_owned());
                        pair.set_value(value);
                        pair
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut counter = prometheus::proto::Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                }
                _ => {
                    let mut gauge = Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
            }
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}

impl Collector for Live {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.runner.snapshot();
        let in_flight = self.runner.traffic().in_flight() as f64;
        let door = self.runner.door().snapshot();
        let canary = self.canary.as_ref().map(|c| c.state()).unwrap_or_default();
        let values: [Vec<Sample>; 13] = [
            STATES
                .iter()
                .map(|s| {
                    (
                        vec![("state", (*s).to_owned())],
                        f64::from(u8::from(*s == snapshot.state)),
                    )
                })
                .collect(),
            vec![(vec![], f64::from(snapshot.failures))],
            vec![(vec![], in_flight)],
            vec![(vec![], f64::from(u8::from(snapshot.verdict.is_some())))],
            self.ports
                .iter()
                .map(|p| (vec![("port", p.name.to_owned())], p.open() as f64))
                .collect(),
            self.ports
                .iter()
                .map(|p| (vec![("port", p.name.to_owned())], p.refused() as f64))
                .collect(),
            vec![(vec![], door.at_app as f64)],
            vec![(vec![], door.queued as f64)],
            vec![(
                vec![],
                match door.limits.bounded() {
                    true => door.limits.limit as f64,
                    false => f64::INFINITY,
                },
            )],
            Refusal::ALL
                .iter()
                .zip(door.refused)
                .map(|(why, n)| (vec![("reason", why.as_str().to_owned())], n as f64))
                .collect(),
            vec![(vec![], canary.runs as f64)],
            ["mismatch", "hang", "error", "unavailable", "busy"]
                .iter()
                .map(|o| {
                    let n = canary.failures.get(o).copied().unwrap_or(0);
                    (vec![("outcome", (*o).to_owned())], n as f64)
                })
                .collect(),
            vec![(vec![], canary.seconds_total)],
        ];
        FAMILIES
            .iter()
            .zip(values)
            .map(|(f, samples)| family(f.name, f.help, f.kind, samples))
            .collect()
    }
}
