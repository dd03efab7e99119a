//! The GPU fault policy of SPEC G2/G3: which readings and events are fatal, which warn.
//!
//! Pure: it takes samples, XID events and NVML failures with the time they were seen, and
//! returns findings. The threads that read NVML live in `nvml/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::error::{bad_setting, Result};
use crate::nvml::sample::{throttle, GpuSample, NvmlFailure};

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

#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    pub fatal_xids: BTreeSet<u64>,
    pub warning_xids: BTreeSet<u64>,
    pub ignored_xids: BTreeSet<u64>,
    pub temperature_warning_celsius: u32,
    pub retired_pages_fatal: u64,
    pub remapped_rows_fatal: u64,
    /// Warning rule → how long it must hold before it is fatal.
    pub promote: BTreeMap<String, f64>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            fatal_xids: [48, 64, 74, 79, 95, 119, 120, 140].into(),
            // 63/92/94: ECC recording, high single-bit rate, contained ECC; 54: auxiliary
            // power; 61/62: internal micro-controller; 38: driver firmware; 56/57/58:
            // display and memory interface; 121: C2C link; 150: power/thermal (Blackwell).
            warning_xids: [38, 54, 56, 57, 58, 61, 62, 63, 92, 94, 121, 150].into(),
            ignored_xids: [13, 31, 43, 45, 68].into(),
            temperature_warning_celsius: 85,
            retired_pages_fatal: 63,
            remapped_rows_fatal: 512,
            promote: BTreeMap::new(),
        }
    }
}

impl PolicySettings {
    pub fn validate(self) -> Result<Self> {
        if let Some(both) = self.fatal_xids.intersection(&self.ignored_xids).next() {
            return Err(bad_setting(
                "ignored_xids",
                "disjoint from fatal_xids",
                format!("XID {both} in both"),
            ));
        }
        for (rule, seconds) in &self.promote {
            if !SUSTAINABLE_WARNINGS.contains(&rule.as_str()) {
                return Err(bad_setting(
                    "promote_warnings",
                    "keyed by pending_retirement, pending_remap, hw_slowdown, \
                     hw_thermal_slowdown, power_brake, temperature, corrected_ecc or \
                     sw_thermal_slowdown",
                    format!("{rule:?}"),
                ));
            }
            if !(seconds.is_finite() && *seconds >= 0.0) {
                return Err(bad_setting(
                    "promote_warnings",
                    "a number of seconds >= 0 per warning",
                    format!("{rule}={seconds}"),
                ));
            }
        }
        if self.retired_pages_fatal == 0 || self.remapped_rows_fatal == 0 {
            return Err(bad_setting(
                "retired_pages_fatal/remapped_rows_fatal",
                "an integer >= 1",
                0,
            ));
        }
        Ok(self)
    }
}

/// The policy's memory: the count at start, the last counters, when each warning began.
#[derive(Debug)]
pub struct Policy {
    settings: PolicySettings,
    start_count: Option<u32>,
    last: HashMap<u32, GpuSample>,
    /// (gpu, warning rule) → clock time it began to hold.
    active: BTreeMap<(u32, &'static str), Duration>,
}

impl Policy {
    pub fn new(settings: PolicySettings) -> Policy {
        Policy {
            settings,
            start_count: None,
            last: HashMap::new(),
            active: BTreeMap::new(),
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
            detail: format!("{count} GPU(s) visible, {start} at start"),
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
        let (rule, severity) = if s.ignored_xids.contains(&xid) {
            return None;
        } else if s.fatal_xids.contains(&xid) {
            ("critical_xid", Severity::Fatal)
        } else if s.warning_xids.contains(&xid) {
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

    /// G2/G3 for one sample of one GPU. Warnings are reported when they begin; a warning
    /// sustained for its promotion time is reported again as fatal.
    pub fn judge_sample(&mut self, now: Duration, sample: &GpuSample) -> Vec<Finding> {
        let mut findings = Vec::new();
        let gpu = sample.index;
        let finding = |rule: &'static str, severity: Severity, detail: String| Finding {
            gpu: Some(gpu),
            uuid: sample.uuid.as_deref().map(str::to_owned),
            rule,
            severity,
            detail,
            xid: None,
        };
        for error in &sample.errors {
            findings.extend(self.judge_failure(Some(gpu), error.call, &error.error));
        }
        let previous = self.last.get(&gpu);
        let grew = |now: Option<u64>, before: Option<u64>| match (now, before) {
            (Some(n), Some(b)) if n > b => Some(n - b),
            _ => None,
        };
        if let Some(new) = grew(
            sample.ecc.volatile_uncorrected,
            previous.and_then(|p| p.ecc.volatile_uncorrected),
        ) {
            findings.push(finding(
                "uncorrectable_ecc",
                Severity::Fatal,
                format!("{new} new volatile uncorrectable ECC error(s)"),
            ));
        }
        if let Some(rows) = &sample.remapped_rows {
            if rows.failure {
                findings.push(finding(
                    "row_remap_failure",
                    Severity::Fatal,
                    "row remapping failed".into(),
                ));
            } else if rows.uncorrectable >= self.settings.remapped_rows_fatal {
                findings.push(finding(
                    "row_remap_failure",
                    Severity::Fatal,
                    format!(
                        "{} uncorrectable remapped rows (limit {})",
                        rows.uncorrectable, self.settings.remapped_rows_fatal
                    ),
                ));
            }
        }
        if let Some(pages) = &sample.retired_pages {
            let total = pages.single_bit + pages.double_bit;
            if total >= self.settings.retired_pages_fatal {
                findings.push(finding(
                    "retired_pages",
                    Severity::Fatal,
                    format!(
                        "{total} retired pages (limit {})",
                        self.settings.retired_pages_fatal
                    ),
                ));
            }
        }

        let reasons = sample.throttle_reasons.unwrap_or(0);
        let corrected = grew(
            sample.ecc.volatile_corrected,
            previous.and_then(|p| p.ecc.volatile_corrected),
        );
        let mut warnings: Vec<(&'static str, Option<String>)> = vec![
            (
                "pending_retirement",
                sample
                    .retired_pages
                    .as_ref()
                    .is_some_and(|p| p.pending)
                    .then(|| "pages are pending retirement".into()),
            ),
            (
                "pending_remap",
                sample
                    .remapped_rows
                    .as_ref()
                    .is_some_and(|r| r.pending)
                    .then(|| "rows are pending remapping".into()),
            ),
            (
                "temperature",
                sample
                    .temperature_c
                    .filter(|t| *t > self.settings.temperature_warning_celsius)
                    .map(|t| {
                        format!(
                            "{t} °C, above {} °C",
                            self.settings.temperature_warning_celsius
                        )
                    }),
            ),
            (
                "corrected_ecc",
                corrected.map(|n| format!("{n} new volatile corrected ECC error(s)")),
            ),
        ];
        warnings.extend(
            THROTTLE_WARNINGS
                .iter()
                .map(|&(rule, bit, text)| (rule, (reasons & bit != 0).then(|| text.to_owned()))),
        );
        for (rule, holding) in warnings {
            let key = (gpu, rule);
            let Some(detail) = holding else {
                self.active.remove(&key);
                continue;
            };
            let since = match self.active.get(&key) {
                Some(&since) => since,
                None => {
                    self.active.insert(key, now);
                    findings.push(finding(rule, Severity::Warning, detail.clone()));
                    now
                }
            };
            if let Some(&limit) = self.settings.promote.get(rule) {
                let held = now.saturating_sub(since);
                if held >= Duration::from_secs_f64(limit) {
                    findings.push(finding(
                        rule,
                        Severity::Fatal,
                        format!("{detail}, sustained for {:.1}s", held.as_secs_f64()),
                    ));
                }
            }
        }
        self.last.insert(gpu, sample.clone());
        findings
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
