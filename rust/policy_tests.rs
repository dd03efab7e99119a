//! SPEC G2/G3 rules, one by one, with made-up samples and times.

use super::*;
use crate::nvml::sample::{EccCounts, ReadError, RemappedRows, RetiredPages};

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

fn healthy(index: u32) -> GpuSample {
    GpuSample {
        index,
        uuid: Some(format!("GPU-{index}").into()),
        temperature_c: Some(40),
        throttle_reasons: Some(0),
        ecc: EccCounts {
            volatile_corrected: Some(0),
            volatile_uncorrected: Some(0),
            aggregate_corrected: Some(0),
            aggregate_uncorrected: Some(0),
        },
        retired_pages: Some(RetiredPages::default()),
        remapped_rows: Some(RemappedRows::default()),
        ..Default::default()
    }
}

fn rules(findings: &[Finding], severity: Severity) -> Vec<&'static str> {
    findings
        .iter()
        .filter(|f| f.severity == severity)
        .map(|f| f.rule)
        .collect()
}

fn policy() -> Policy {
    Policy::new(GpuSettings::default())
}

#[test]
fn g2_a_healthy_gpu_finds_nothing() {
    let mut p = policy();
    assert!(p.judge_sample(secs(0.0), &healthy(0)).is_empty());
    assert!(p.judge_sample(secs(5.0), &healthy(0)).is_empty());
}

#[test]
fn g2_critical_xids_are_fatal_warnings_warn_application_xids_are_ignored() {
    let p = policy();
    for xid in [48, 64, 74, 79, 95, 119, 120, 140] {
        let f = p.judge_xid(Some(0), xid).unwrap();
        assert_eq!(
            (f.rule, f.severity),
            ("critical_xid", Severity::Fatal),
            "XID {xid}"
        );
        assert_eq!(f.detail, format!("XID {xid}"));
    }
    for xid in [63, 92, 94] {
        assert_eq!(
            p.judge_xid(Some(0), xid).unwrap().severity,
            Severity::Warning
        );
    }
    for xid in [13, 31, 43, 45, 68] {
        assert!(p.judge_xid(Some(0), xid).is_none(), "XID {xid}");
    }
    assert_eq!(p.judge_xid(None, 999).unwrap().rule, "unlisted_xid");
}

#[test]
fn g2_xid_sets_are_settable() {
    let settings = GpuSettings {
        gpu_fatal_xids: [13].into(),
        gpu_ignored_xids: [79].into(),
        ..Default::default()
    };
    let p = Policy::new(settings.validate().unwrap());
    assert_eq!(p.judge_xid(Some(1), 13).unwrap().severity, Severity::Fatal);
    assert!(p.judge_xid(Some(1), 79).is_none());
}

#[test]
fn g2_gpu_lost_and_reset_required_are_fatal_from_any_call() {
    let mut p = policy();
    let mut s = healthy(2);
    s.errors.push(ReadError {
        call: "nvmlDeviceGetTemperature",
        error: NvmlFailure::GpuLost,
    });
    let f = p.judge_sample(secs(1.0), &s);
    assert_eq!(rules(&f, Severity::Fatal), vec!["gpu_lost"]);
    assert_eq!(f[0].detail, "nvmlDeviceGetTemperature: GPU is lost");
    let f = p.judge_failure(
        Some(2),
        "nvmlDeviceGetPowerUsage",
        &NvmlFailure::ResetRequired,
    );
    assert_eq!(f.unwrap().rule, "reset_required");
    let other = NvmlFailure::Other("Not Supported".into());
    assert!(p.judge_failure(Some(2), "x", &other).is_none());
}

#[test]
fn g2_a_new_volatile_uncorrectable_ecc_error_is_fatal_existing_ones_are_the_baseline() {
    let mut p = policy();
    let mut s = healthy(0);
    s.ecc.volatile_uncorrected = Some(2);
    assert!(
        p.judge_sample(secs(0.0), &s).is_empty(),
        "errors before start are the baseline"
    );
    assert!(p.judge_sample(secs(5.0), &s).is_empty());
    s.ecc.volatile_uncorrected = Some(3);
    let f = p.judge_sample(secs(10.0), &s);
    assert_eq!(rules(&f, Severity::Fatal), vec!["uncorrectable_ecc"]);
    assert_eq!(f[0].detail, "1 new volatile uncorrectable ECC error(s)");
}

#[test]
fn g2_row_remap_failure_and_too_many_uncorrectable_rows_are_fatal() {
    let mut p = policy();
    let mut s = healthy(0);
    s.remapped_rows = Some(RemappedRows {
        failure: true,
        ..Default::default()
    });
    assert_eq!(
        rules(&p.judge_sample(secs(0.0), &s), Severity::Fatal),
        vec!["row_remap_failure"]
    );
    let mut s = healthy(1);
    s.remapped_rows = Some(RemappedRows {
        uncorrectable: 511,
        ..Default::default()
    });
    assert!(rules(&p.judge_sample(secs(0.0), &s), Severity::Fatal).is_empty());
    s.remapped_rows.as_mut().unwrap().uncorrectable = 512;
    assert_eq!(
        rules(&p.judge_sample(secs(1.0), &s), Severity::Fatal),
        vec!["row_remap_failure"]
    );
}

#[test]
fn g2_sixty_three_retired_pages_are_fatal() {
    let mut p = policy();
    let mut s = healthy(0);
    s.retired_pages = Some(RetiredPages {
        single_bit: 40,
        double_bit: 22,
        pending: false,
    });
    assert!(p.judge_sample(secs(0.0), &s).is_empty());
    s.retired_pages.as_mut().unwrap().double_bit = 23;
    let f = p.judge_sample(secs(1.0), &s);
    assert_eq!(rules(&f, Severity::Fatal), vec!["retired_pages"]);
    assert_eq!(f[0].detail, "63 retired pages (limit 63)");
    // Reported once while it holds, not on every sample after.
    assert!(p.judge_sample(secs(2.0), &s).is_empty());
    assert!(p.judge_sample(secs(3.0), &s).is_empty());
}

#[test]
fn g2_the_gpu_count_dropping_below_the_start_is_fatal() {
    let mut p = policy();
    assert!(p.judge_count(8).is_none());
    assert!(p.judge_count(8).is_none());
    let f = p.judge_count(7).unwrap();
    assert_eq!(
        (f.rule, f.detail.as_str()),
        ("gpu_count_dropped", "7 watched GPU(s) visible, 8 at start")
    );
}

#[test]
fn g3_warnings_are_reported_once_when_they_begin_and_are_not_fatal() {
    let mut p = policy();
    let mut s = healthy(0);
    s.throttle_reasons = Some(throttle::HW_THERMAL_SLOWDOWN | throttle::HW_POWER_BRAKE_SLOWDOWN);
    s.temperature_c = Some(91);
    s.retired_pages.as_mut().unwrap().pending = true;
    s.remapped_rows.as_mut().unwrap().pending = true;
    let f = p.judge_sample(secs(0.0), &s);
    assert!(rules(&f, Severity::Fatal).is_empty());
    let mut warned = rules(&f, Severity::Warning);
    warned.sort();
    assert_eq!(
        warned,
        vec![
            "hw_thermal_slowdown",
            "pending_remap",
            "pending_retirement",
            "power_brake",
            "temperature"
        ]
    );
    assert!(
        p.judge_sample(secs(5.0), &s).is_empty(),
        "still holding: not reported again"
    );
    assert_eq!(p.active_warnings().len(), 5);
    assert!(p.judge_sample(secs(10.0), &healthy(0)).is_empty());
    assert!(p.active_warnings().is_empty());
}

#[test]
fn g3_corrected_ecc_errors_warn() {
    let mut p = policy();
    let mut s = healthy(0);
    p.judge_sample(secs(0.0), &s);
    s.ecc.volatile_corrected = Some(4);
    let f = p.judge_sample(secs(5.0), &s);
    assert_eq!(rules(&f, Severity::Warning), vec!["corrected_ecc"]);
}

#[test]
fn g3_a_warning_sustained_for_its_promotion_time_is_fatal() {
    let settings = GpuSettings {
        gpu_promote_warnings: [("temperature".to_owned(), 10.0)].into(),
        ..Default::default()
    };
    let mut p = Policy::new(settings.validate().unwrap());
    let mut hot = healthy(0);
    hot.temperature_c = Some(95);
    assert_eq!(
        rules(&p.judge_sample(secs(0.0), &hot), Severity::Warning),
        vec!["temperature"]
    );
    assert!(rules(&p.judge_sample(secs(9.9), &hot), Severity::Fatal).is_empty());
    let f = p.judge_sample(secs(10.0), &hot);
    assert_eq!(rules(&f, Severity::Fatal), vec!["temperature"]);
    assert!(
        f[0].detail.contains("sustained for 10.0s"),
        "{}",
        f[0].detail
    );
    // Once, not on every later sample while it holds.
    for t in [11.0, 20.0, 60.0] {
        assert!(
            rules(&p.judge_sample(secs(t), &hot), Severity::Fatal).is_empty(),
            "{t}"
        );
    }
    // A warning that stops holding starts over, and is promoted again after its time.
    p.judge_sample(secs(61.0), &healthy(0));
    assert!(rules(&p.judge_sample(secs(62.0), &hot), Severity::Fatal).is_empty());
    let again = p.judge_sample(secs(72.0), &hot);
    assert_eq!(rules(&again, Severity::Fatal), vec!["temperature"]);
}

#[test]
fn g3_bad_policy_settings_are_refused() {
    let unknown = GpuSettings {
        gpu_promote_warnings: [("fan".to_owned(), 1.0)].into(),
        ..Default::default()
    };
    let err = unknown.validate().unwrap_err();
    assert!(err.to_string().starts_with("gpu_promote_warnings must be"));
    assert_eq!(err.setting(), Some("gpu_promote_warnings"));
    let overlap = GpuSettings {
        gpu_ignored_xids: [79].into(),
        ..Default::default()
    };
    assert_eq!(
        overlap.validate().unwrap_err().setting(),
        Some("gpu_ignored_xids")
    );
    let zero = GpuSettings {
        gpu_remapped_rows_fatal: 0,
        ..Default::default()
    };
    // One setting per error, named as data (it once came out as the retired-pages one).
    assert_eq!(
        zero.validate().unwrap_err().setting(),
        Some("gpu_remapped_rows_fatal")
    );
}

#[test]
fn every_promotable_warning_and_every_xid_rule_is_a_known_rule() {
    for rule in SUSTAINABLE_WARNINGS {
        assert!(
            RULES
                .iter()
                .any(|(n, s, _)| *n == rule && *s == Severity::Warning),
            "{rule}"
        );
    }
    let p = policy();
    for xid in [79, 63, 999] {
        assert!(known_rule(p.judge_xid(Some(0), xid).unwrap().rule));
    }
}
