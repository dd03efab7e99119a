//! The series read from their owners when scraped: the runner's state, the requests in
//! flight, the ports' connections. No copy of any of them is kept here.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::proxy::listener::Port;
use crate::runner::RunnerHandle;

const STATES: [&str; 5] = ["starting", "ready", "replacing", "stopping", "stopped"];

pub struct Live {
    runner: RunnerHandle,
    ports: Vec<Arc<Port>>,
    descs: Vec<Desc>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const FAMILIES: [Family; 6] = [
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
        help: "Proxied requests in flight to the app (tunnels and streams included)",
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
];

impl Live {
    pub fn new(runner: RunnerHandle, ports: Vec<Arc<Port>>) -> Live {
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
        let values: [Vec<Sample>; 6] = [
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
        ];
        FAMILIES
            .iter()
            .zip(values)
            .map(|(f, samples)| family(f.name, f.help, f.kind, samples))
            .collect()
    }
}
