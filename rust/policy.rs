//! The GPU fault policy of SPEC G2/G3: which readings and events are fatal, which warn.
//!
//! Pure: it takes samples, XID events and NVML failures with the time they were seen, and
//! returns findings. The threads that read NVML live in `nvml/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::nvml::sample::{throttle, GpuSample, NvmlFailure};
use crate::settings::GpuSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Fatal => "fatal",
        }
    }
}

/// Every rule a finding can name, with its severity and when it is found (G2, G3): the one
/// list, exported to Python for `/status`, the metrics and the docs.
pub const RULES: [(&str, Severity, &str); 26] = [
    (
        "canary_mismatch",
        Severity::Fatal,
        "the compute canary's answer differs from the CPU's: silent data corruption (G7)",
    ),
    (
        "canary_hang",
        Severity::Fatal,
        "the compute canary did not finish within gpu_canary_timeout_seconds (G7)",
    ),
    (
        "canary_error",
        Severity::Fatal,
        "the compute canary met a CUDA error of broken hardware or driver (G7)",
    ),
    (
        "canary_unavailable",
        Severity::Warning,
        "the compute canary could not run: out of memory, busy, not permitted, no CUDA (G7)",
    ),
    (
        "gpu_lost",
        Severity::Fatal,
        "an NVML call answers GPU_IS_LOST",
    ),
    (
        "reset_required",
        Severity::Fatal,
        "an NVML call answers RESET_REQUIRED",
    ),
    ("critical_xid", Severity::Fatal, "an XID in gpu_fatal_xids"),
    (
        "uncorrectable_ecc",
        Severity::Fatal,
        "the volatile uncorrectable ECC count grows, or a double-bit ECC event",
    ),
    (
        "row_remap_failure",
        Severity::Fatal,
        "row remapping failed, or uncorrectable remapped rows reach gpu_remapped_rows_fatal",
    ),
    (
        "retired_pages",
        Severity::Fatal,
        "retired pages reach gpu_retired_pages_fatal",
    ),
    (
        "gpu_count_dropped",
        Severity::Fatal,
        "fewer of the watched GPUs visible than at start",
    ),
    (
        "nvml_unavailable",
        Severity::Fatal,
        "with --gpu-required: NVML cannot be loaded or started (G6)",
    ),
    (
        "gpu_missing",
        Severity::Fatal,
        "with --gpu-required: a GPU asked for is not there (G6)",
    ),
    (
        "event_wait_failed",
        Severity::Fatal,
        "the XID event wait fails with anything but its timeout",
    ),
    (
        "nvml_hung",
        Severity::Fatal,
        "an NVML call outlives nvml_watchdog_seconds",
    ),
    (
        "warning_xid",
        Severity::Warning,
        "an XID in gpu_warning_xids",
    ),
    ("unlisted_xid", Severity::Warning, "an XID in no list"),
    (
        "events_unavailable",
        Severity::Warning,
        "XID events cannot be watched on this driver",
    ),
    (
        "pending_retirement",
        Severity::Warning,
        "pages are pending retirement",
    ),
    (
        "pending_remap",
        Severity::Warning,
        "rows are pending remapping",
    ),
    (
        "hw_slowdown",
        Severity::Warning,
        "the hardware slowdown clock-throttle reason",
    ),
    (
        "hw_thermal_slowdown",
        Severity::Warning,
        "the hardware thermal slowdown clock-throttle reason",
    ),
    (
        "sw_thermal_slowdown",
        Severity::Warning,
        "the software thermal slowdown clock-throttle reason",
    ),
    (
        "power_brake",
        Severity::Warning,
        "the power brake clock-throttle reason",
    ),
    (
        "temperature",
        Severity::Warning,
        "above gpu_temperature_warning_celsius",
    ),
    (
        "corrected_ecc",
        Severity::Warning,
        "the volatile corrected ECC count grows",
    ),
];

/// Whether `rule` is one of `RULES` (every finding's rule is).
pub fn known_rule(rule: &str) -> bool {
    RULES.iter().any(|(name, _, _)| *name == rule)
}

/// The warnings read from samples; each may be promoted to fatal when sustained (G3).
pub const SUSTAINABLE_WARNINGS: [&str; 8] = [
    "pending_retirement",
    "pending_remap",
    "hw_slowdown",
    "hw_thermal_slowdown",
    "power_brake",
    "temperature",
    "corrected_ecc",
    "sw_thermal_slowdown",
];

/// The clock-throttle reasons that warn (G3): rule, bit, what it means.
const THROTTLE_WARNINGS: [(&str, u64, &str); 4] = [
    ("hw_slowdown", throttle::HW_SLOWDOWN, "hardware slowdown"),
    (
        "hw_thermal_slowdown",
        throttle::HW_THERMAL_SLOWDOWN,
        "hardware thermal slowdown",
    ),
    (
        "power_brake",
        throttle::HW_POWER_BRAKE_SLOWDOWN,
        "power brake slowdown",
    ),
    (
        "sw_thermal_slowdown",
        throttle::SW_THERMAL_SLOWDOWN,
        "software thermal slowdown",
    ),
];

/// One thing the policy found on one GPU (or on the driver, `gpu: None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub gpu: Option<u32>,
    pub uuid: Option<String>,
    pub rule: &'static str,
    pub severity: Severity,
    pub detail: String,
    /// The XID, for XID findings.
    pub xid: Option<u64>,
}

/// The policy's memory: the count at start, the last counters, when each warning began,
/// which states were reported.
#[derive(Debug)]
pub struct Policy {
    settings: GpuSettings,
    start_count: Option<u32>,
    last: HashMap<u32, GpuSample>,
    /// (gpu, warning rule) → clock time it began to hold.
    active: BTreeMap<(u32, &'static str), Duration>,
    /// (gpu, rule) of the states reported while they hold: fatal rows and pages, promotions.
    reported: BTreeSet<(u32, &'static str)>,
}

impl Policy {
    pub fn new(settings: GpuSettings) -> Policy {
        Policy {
            settings,
            start_count: None,
            last: HashMap::new(),
            active: BTreeMap::new(),
            reported: BTreeSet::new(),
        }
    }

    /// The warnings holding now, with when each began.
    pub fn active_warnings(&self) -> Vec<(u32, &'static str, Duration)> {
        self.active
            .iter()
            .map(|(&(gpu, rule), &since)| (gpu, rule, since))
            .collect()
    }

    /// G2: the visible GPU count never drops below the count at start.
    pub fn judge_count(&mut self, count: u32) -> Option<Finding> {
        let start = *self.start_count.get_or_insert(count);
        (count < start).then(|| Finding {
            gpu: None,
            uuid: None,
            rule: "gpu_count_dropped",
            severity: Severity::Fatal,
            detail: format!("{count} watched GPU(s) visible, {start} at start"),
            xid: None,
        })
    }

    /// G2: GPU lost or reset required, from any call.
    pub fn judge_failure(
        &self,
        gpu: Option<u32>,
        call: &str,
        failure: &NvmlFailure,
    ) -> Option<Finding> {
        let rule = match failure {
            NvmlFailure::GpuLost => "gpu_lost",
            NvmlFailure::ResetRequired => "reset_required",
            NvmlFailure::Other(_) => return None,
        };
        Some(Finding {
            gpu,
            uuid: gpu
                .and_then(|g| self.last.get(&g))
                .and_then(|s| s.uuid.as_deref().map(str::to_owned)),
            rule,
            severity: Severity::Fatal,
            detail: format!("{call}: {failure}"),
            xid: None,
        })
    }

    /// G2/G3: an XID event. Ignored XIDs find nothing.
    pub fn judge_xid(&self, gpu: Option<u32>, xid: u64) -> Option<Finding> {
        let s = &self.settings;
        let (rule, severity) = if s.gpu_ignored_xids.contains(&xid) {
            return None;
        } else if s.gpu_fatal_xids.contains(&xid) {
            ("critical_xid", Severity::Fatal)
        } else if s.gpu_warning_xids.contains(&xid) {
            ("warning_xid", Severity::Warning)
        } else {
            ("unlisted_xid", Severity::Warning)
        };
        Some(Finding {
            gpu,
            uuid: gpu
                .and_then(|g| self.last.get(&g))
                .and_then(|s| s.uuid.as_deref().map(str::to_owned)),
            rule,
            severity,
            detail: format!("XID {xid}"),
            xid: Some(xid),
        })
    }

    /// G2/G3 for one sample of one GPU: NVML failures, fatal states, warnings. A state
    /// (a fault, a warning, a promotion) is reported when it begins, not on every sample.
    pub fn judge_sample(&mut self, now: Duration, sample: &GpuSample) -> Vec<Finding> {
        let mut findings: Vec<Finding> = sample
            .errors
            .iter()
            .filter_map(|e| self.judge_failure(Some(sample.index), e.call, &e.error))
            .collect();
        let previous = self.last.remove(&sample.index);
        findings.extend(self.faults(sample, previous.as_ref()));
        findings.extend(self.warnings(now, sample, previous.as_ref()));
        self.last.insert(sample.index, sample.clone());
        findings
    }

    /// G2: what is fatal in a sample. ECC errors by their growth; rows and pages while
    /// they hold, reported once.
    fn faults(&mut self, sample: &GpuSample, previous: Option<&GpuSample>) -> Vec<Finding> {
        let s = &self.settings;
        let mut found: Vec<(&'static str, String)> = Vec::new();
        if let Some(new) = grew(
            sample.ecc.volatile_uncorrected,
            previous.and_then(|p| p.ecc.volatile_uncorrected),
        ) {
            found.push((
                "uncorrectable_ecc",
                format!("{new} new volatile uncorrectable ECC error(s)"),
            ));
        }
        let rows = sample.remapped_rows.as_ref();
        let remap = match rows {
            Some(r) if r.failure => Some("row remapping failed".to_owned()),
            Some(r) if r.uncorrectable >= s.gpu_remapped_rows_fatal => Some(format!(
                "{} uncorrectable remapped rows (limit {})",
                r.uncorrectable, s.gpu_remapped_rows_fatal
            )),
            _ => None,
        };
        let pages = sample
            .retired_pages
            .as_ref()
            .map(|p| p.single_bit + p.double_bit)
            .filter(|total| *total >= s.gpu_retired_pages_fatal)
            .map(|total| {
                format!(
                    "{total} retired pages (limit {})",
                    s.gpu_retired_pages_fatal
                )
            });
        for (rule, holding) in [("row_remap_failure", remap), ("retired_pages", pages)] {
            if self.begins((sample.index, rule), holding.is_some()) {
                found.extend(holding.map(|detail| (rule, detail)));
            }
        }
        found
            .into_iter()
            .map(|(rule, detail)| finding(sample, rule, Severity::Fatal, detail))
            .collect()
    }

    /// G3: the warnings a sample shows, each reported when it begins; one promoted to fatal
    /// (`gpu_promote_warnings`) is reported once more, as fatal, when it has held that long.
    fn warnings(
        &mut self,
        now: Duration,
        sample: &GpuSample,
        previous: Option<&GpuSample>,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (rule, holding) in self.warning_states(sample, previous) {
            let key = (sample.index, rule);
            let Some(detail) = holding else {
                self.active.remove(&key);
                self.reported.remove(&(sample.index, rule));
                continue;
            };
            let since = *self.active.entry(key).or_insert_with(|| {
                findings.push(finding(sample, rule, Severity::Warning, detail.clone()));
                now
            });
            let Some(&limit) = self.settings.gpu_promote_warnings.get(rule) else {
                continue;
            };
            let held = now.saturating_sub(since);
            if held >= Duration::from_secs_f64(limit) && self.reported.insert(key) {
                findings.push(finding(
                    sample,
                    rule,
                    Severity::Fatal,
                    format!("{detail}, sustained for {:.1}s", held.as_secs_f64()),
                ));
            }
        }
        findings
    }

    /// Each warning rule, with what it sees when it holds.
    fn warning_states(
        &self,
        sample: &GpuSample,
        previous: Option<&GpuSample>,
    ) -> Vec<(&'static str, Option<String>)> {
        let limit = self.settings.gpu_temperature_warning_celsius;
        let reasons = sample.throttle_reasons.unwrap_or(0);
        let corrected = grew(
            sample.ecc.volatile_corrected,
            previous.and_then(|p| p.ecc.volatile_corrected),
        );
        let mut states = vec![
            (
                "pending_retirement",
                (sample.retired_pages.as_ref().is_some_and(|p| p.pending))
                    .then(|| "pages are pending retirement".into()),
            ),
            (
                "pending_remap",
                (sample.remapped_rows.as_ref().is_some_and(|r| r.pending))
                    .then(|| "rows are pending remapping".into()),
            ),
            (
                "temperature",
                sample
                    .temperature_c
                    .filter(|t| *t > limit)
                    .map(|t| format!("{t} °C, above {limit} °C")),
            ),
            (
                "corrected_ecc",
                corrected.map(|n| format!("{n} new volatile corrected ECC error(s)")),
            ),
        ];
        states.extend(
            THROTTLE_WARNINGS
                .iter()
                .map(|&(rule, bit, text)| (rule, (reasons & bit != 0).then(|| text.to_owned()))),
        );
        states
    }

    /// Whether a state that holds now was not reported yet (and remember it); a state that
    /// stopped holding is forgotten, so it is reported again if it comes back.
    fn begins(&mut self, key: (u32, &'static str), holding: bool) -> bool {
        if holding {
            self.reported.insert(key)
        } else {
            self.reported.remove(&key);
            false
        }
    }
}

/// How much a counter grew since the sample before.
fn grew(now: Option<u64>, before: Option<u64>) -> Option<u64> {
    match (now, before) {
        (Some(n), Some(b)) if n > b => Some(n - b),
        _ => None,
    }
}

fn finding(sample: &GpuSample, rule: &'static str, severity: Severity, detail: String) -> Finding {
    debug_assert!(known_rule(rule), "{rule} is not in RULES");
    Finding {
        gpu: Some(sample.index),
        uuid: sample.uuid.as_deref().map(str::to_owned),
        rule,
        severity,
        detail,
        xid: None,
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
