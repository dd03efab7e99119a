//! `/status` (SPEC A, H8, G4): everything an operator asks first, from one snapshot of the
//! core, as JSON. Also the one JSON shape of a check outcome, a verdict and the GPU state:
//! the gateway's check answer (H5) and the Python bindings (`to_dict`) use these too.
//!
//! What the core does not own (the settings as the command line gave them, the app's
//! process) Python hands over as JSON sections (`Info`), and they are shown as given.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::canary::CanaryState;
use crate::door::{DoorSnapshot, Refusal};
use crate::nvml::sample::GpuSample;
use crate::nvml::{Found, MonitorState};
use crate::proxy::listener::Port;
use crate::runner::RunnerHandle;
use crate::verdict::{Outcome, Verdict};
use crate::worker::lock;

fn round3(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

pub fn outcome_json(o: &Outcome) -> Value {
    json!({
        "id": o.id,
        "triggers": o.triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "passed": o.report.passed(),
        "status": o.report.status,
        "error": o.report.error,
        "latency_seconds": o.report.latency.as_secs_f64(),
        "age_seconds": o.age.as_secs_f64(),
        "counted": o.counted.as_str(),
        "consecutive_failures": o.consecutive_failures,
    })
}

pub fn verdict_json(v: &Verdict) -> Value {
    json!({
        "reason": v.reason.as_str(),
        "detail": v.detail,
        "exit_code": v.reason.exit_code(),
        "age_seconds": v.age.as_secs_f64(),
    })
}

pub fn sample_json(s: &GpuSample) -> Value {
    json!({
        "index": s.index,
        "uuid": s.uuid.as_deref(),
        "name": s.name.as_deref(),
        "pci_bus_id": s.pci_bus_id.as_deref(),
        "temperature_c": s.temperature_c,
        "memory_temperature_c": s.memory_temperature_c,
        "sm_clock_mhz": s.sm_clock_mhz,
        "memory_clock_mhz": s.memory_clock_mhz,
        "throttle_reasons": s.throttle_reasons,
        "power_mw": s.power_mw,
        "gpu_utilization": s.gpu_utilization,
        "memory_utilization": s.memory_utilization,
        "memory_used_bytes": s.memory_used_bytes,
        "memory_total_bytes": s.memory_total_bytes,
        "energy_mj": s.energy_mj,
        "pcie_replays": s.pcie_replays,
        "ecc": {
            "volatile_corrected": s.ecc.volatile_corrected,
            "volatile_uncorrected": s.ecc.volatile_uncorrected,
            "aggregate_corrected": s.ecc.aggregate_corrected,
            "aggregate_uncorrected": s.ecc.aggregate_uncorrected,
        },
        "retired_pages": s.retired_pages.as_ref().map(|p| json!({
            "single_bit": p.single_bit, "double_bit": p.double_bit, "pending": p.pending,
        })),
        "remapped_rows": s.remapped_rows.as_ref().map(|r| json!({
            "correctable": r.correctable, "uncorrectable": r.uncorrectable,
            "pending": r.pending, "failure": r.failure,
        })),
        "errors": s.errors.iter().map(|e| json!({
            "call": e.call, "error": e.error.to_string(),
        })).collect::<Vec<_>>(),
    })
}

pub fn found_json(f: &Found) -> Value {
    json!({
        "gpu": f.finding.gpu,
        "uuid": f.finding.uuid,
        "rule": f.finding.rule,
        "severity": f.finding.severity.as_str(),
        "detail": f.finding.detail,
        "xid": f.finding.xid,
        "age_seconds": f.age.as_secs_f64(),
    })
}

pub fn gpu_json(state: &MonitorState) -> Value {
    json!({
        "enabled": state.enabled,
        "detail": state.detail,
        "driver_version": state.driver_version,
        "gpu_count": state.gpu_count,
        "sample_cost_seconds": state.sample_cost.map(|c| c.as_secs_f64()),
        "samples": state.samples.iter().map(sample_json).collect::<Vec<_>>(),
        "findings": state.findings.iter().map(found_json).collect::<Vec<_>>(),
        "active_warnings": state.active_warnings.iter().map(|(gpu, rule, since)| json!({
            "gpu": gpu, "rule": rule, "since_seconds": since.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "watched": state.watched.iter().map(|g| json!({
            "index": g.index, "uuid": g.uuid, "selected_by": g.selector, "events": g.events,
        })).collect::<Vec<_>>(),
        "missing": state.missing.iter().map(|(selector, why)| json!({
            "selector": selector, "why": why,
        })).collect::<Vec<_>>(),
    })
}

/// The runner's life, as `/status` and `Core.state()` show it.
pub fn life_json(runner: &RunnerHandle) -> Value {
    let snap = runner.snapshot();
    let verdict = snap.verdict.as_ref();
    json!({
        "state": snap.state,
        "ready": snap.ready,
        "reason": verdict.map(|v| v.reason.as_str()),
        "detail": verdict.map(|v| v.detail.as_str()),
        "exit_code": snap.exit_code,
        "draining_since_age_seconds": verdict.map(|v| v.age.as_secs_f64()),
        "age_seconds": snap.age.as_secs_f64(),
        "consecutive_failures": snap.failures,
        "running_check": snap.running_check,
        "health_url": snap.probe_url,
    })
}

/// The sections Python hands over: `settings`, `app`, `gpu_selection`.
#[derive(Default)]
pub struct Info(Mutex<BTreeMap<String, Value>>);

impl Info {
    pub fn set(&self, key: &str, value: Value) {
        lock(&self.0).insert(key.to_owned(), value);
    }

    fn get(&self, key: &str) -> Value {
        lock(&self.0).get(key).cloned().unwrap_or(Value::Null)
    }
}

/// G7: the canary's state and each GPU's last run.
pub fn canary_json(c: &CanaryState) -> Value {
    json!({
        "enabled": c.enabled,
        "detail": c.detail,
        "runs": c.runs,
        "failures": c.failures,
        "last": c.last.iter().map(|r| json!({
            "gpu": r.gpu, "uuid": r.uuid, "outcome": r.outcome, "detail": r.detail,
            "seconds": round3(r.seconds), "at_uptime_seconds": round3(r.at),
        })).collect::<Vec<_>>(),
    })
}

/// Q5: the door's places, its queue and its refusals.
pub fn door_json(door: &DoorSnapshot) -> Value {
    let refused: Map<String, Value> = Refusal::ALL
        .iter()
        .zip(door.refused)
        .map(|(why, n)| (why.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "at_app": door.at_app,
        "max_concurrency": door.limits.bounded().then_some(door.limits.limit),
        "queued": door.queued,
        "max_queue": door.limits.queue,
        "queue_timeout_seconds": door.limits.queue_timeout.map(|t| round3(t.as_secs_f64())),
        "check_running_alone": door.exclusive,
        "closed": door.closed,
        "admitted": door.admitted,
        "refused": refused,
    })
}

/// What `/status` is made of.
pub struct Parts<'a> {
    pub started: Instant,
    pub runner: &'a RunnerHandle,
    pub gpu: Option<MonitorState>,
    pub canary: Option<CanaryState>,
    /// None embedded (SPEC E): the app's server holds the client connections.
    pub proxy: Option<&'a Port>,
    pub info: &'a Info,
}

pub fn document(parts: &Parts<'_>) -> Value {
    let mut life = match life_json(parts.runner) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut take = |key: &str| life.remove(key).unwrap_or(Value::Null);
    let since = take("draining_since_age_seconds");
    let age = life
        .get("age_seconds")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut out = Map::new();
    for key in ["state", "ready", "reason", "detail", "exit_code"] {
        out.insert(key.to_owned(), life.remove(key).unwrap_or(Value::Null));
    }
    out.insert(
        "uptime_seconds".into(),
        json!(round3(parts.started.elapsed().as_secs_f64())),
    );
    out.insert(
        "draining_for_seconds".into(),
        since
            .as_f64()
            .map_or(Value::Null, |s| json!(round3(age - s))),
    );
    out.insert(
        "in_flight".into(),
        json!(parts.runner.traffic().in_flight()),
    );
    out.insert("door".into(), door_json(&parts.runner.door().snapshot()));
    out.insert(
        "connections".into(),
        parts.proxy.map_or(
            Value::Null,
            |proxy| json!({"open": proxy.open(), "max": proxy.cap, "refused": proxy.refused()}),
        ),
    );
    out.insert("app".into(), parts.info.get("app"));
    out.insert("health".into(), Value::Object(life));
    out.insert("settings".into(), parts.info.get("settings"));
    out.insert("setting_sources".into(), parts.info.get("setting_sources"));
    out.insert(
        "checks".into(),
        parts.runner.history().iter().map(outcome_json).collect(),
    );
    let gpu = match &parts.gpu {
        Some(state) => {
            let mut gpu = gpu_json(state);
            gpu["selected_by"] = parts.info.get("gpu_selection");
            gpu["canary"] = parts.canary.as_ref().map_or_else(
                || json!({"enabled": false, "detail": "the compute canary is off (--gpu-canary-seconds off and --cuda-library \"\", or no GPU monitoring)"}),
                canary_json,
            );
            gpu
        }
        None => json!({"enabled": false, "detail": "GPU monitoring is off (--no-gpu-monitoring)"}),
    };
    out.insert("gpu".into(), gpu);
    Value::Object(out)
}
