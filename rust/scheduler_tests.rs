//! Every H rule of SPEC, driven through the scheduler with an injected clock (no sleeps).

use super::*;
use crate::verdict::Counted;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// period 1 s, timeout 0.5 s, threshold 3, start period 0 unless a test says otherwise;
/// the startup interval (K3) equal to the period, so the schedule is the period's.
fn quick() -> HealthSettings {
    HealthSettings {
        start_period_seconds: 0,
        timeout_seconds: 0.5,
        failure_threshold: 3,
        period_seconds: 1.0,
        startup_check_seconds: 1.0,
        trigger_interval_seconds: 0.25,
        ..Default::default()
    }
}

fn ok(latency_ms: u64) -> ProbeReport {
    ProbeReport {
        status: Some(200),
        error: None,
        latency: ms(latency_ms),
        local: false,
    }
}

fn status(code: u16) -> ProbeReport {
    ProbeReport {
        status: Some(code),
        error: None,
        latency: ms(5),
        local: false,
    }
}

fn refused() -> ProbeReport {
    ProbeReport {
        status: None,
        error: Some("connection refused".into()),
        latency: ms(1),
        local: false,
    }
}

fn out_of_fds() -> ProbeReport {
    ProbeReport {
        status: None,
        error: Some("runwarden has no file descriptor left (Too many open files)".into()),
        latency: ms(0),
        local: true,
    }
}

const IDLE: Traffic = Traffic {
    in_flight: 0,
    last_progress: None,
    last_resumed: None,
};

fn started(actions: &[Action]) -> Option<u64> {
    actions.iter().find_map(|a| match a {
        Action::StartCheck { id, .. } => Some(*id),
        _ => None,
    })
}

fn outcomes(actions: &[Action]) -> Vec<Outcome> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(Event::Check(o)) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

fn replacement(actions: &[Action]) -> Option<Verdict> {
    actions.iter().find_map(|a| match a {
        Action::Emit(Event::Verdict(r)) => Some(r.clone()),
        _ => None,
    })
}

/// Tick at `at`, expect a regular check to start, and finish it `after` later with `report`.
fn regular_check(s: &mut Scheduler, at: Duration, report: ProbeReport) -> Vec<Action> {
    let id = started(&s.tick(at, IDLE)).expect("a regular check is due");
    let done = at + report.latency;
    s.finish(id, report, done, IDLE)
}

#[test]
fn h3_first_check_one_period_after_start_then_every_period() {
    let mut s = Scheduler::new(quick(), ms(10_000));
    assert_eq!(s.next_deadline(IDLE), Some(ms(11_000)));
    assert!(s.tick(ms(10_999), IDLE).is_empty());
    let id = started(&s.tick(ms(11_000), IDLE)).unwrap();
    s.finish(id, ok(20), ms(11_020), IDLE);
    assert_eq!(s.next_deadline(IDLE), Some(ms(12_000)));
    assert!(started(&s.tick(ms(12_000), IDLE)).is_some());
}

#[test]
fn h3_no_regular_checks_when_call_regularly_is_false_once_ready() {
    let mut s = Scheduler::new(
        HealthSettings {
            call_regularly: false,
            ..quick()
        },
        ms(0),
    );
    // Until the first pass, startup probes open readiness; their failures never count.
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    let out = outcomes(&s.finish(id, status(500), ms(1005), IDLE));
    assert_eq!(out[0].counted, Counted::NotReady);
    assert_eq!(out[0].triggers, vec![Trigger::Startup]);
    assert_eq!(s.failures(), 0);
    let id = started(&s.tick(ms(2000), IDLE)).unwrap();
    s.finish(id, ok(5), ms(2005), IDLE);
    assert!(s.life().ready());
    assert_eq!(s.next_deadline(IDLE), None);
    assert!(s.tick(ms(60_000), IDLE).is_empty());
}

#[test]
fn h3_a_check_that_outlives_its_period_delays_the_next_and_never_overlaps() {
    let settings = HealthSettings {
        timeout_seconds: 1.5,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let first = started(&s.tick(ms(1000), IDLE)).unwrap();
    // The next one is due at 2000 while the first still runs: nothing starts.
    assert!(started(&s.tick(ms(2000), IDLE)).is_none());
    assert_eq!(s.running_id(), Some(first));
    // The first ends at 2300; the delayed one starts at once, and the schedule moves on from it.
    let actions = s.finish(first, ok(1300), ms(2300), IDLE);
    let second = started(&actions).unwrap();
    assert_ne!(first, second);
    assert_eq!(s.next_deadline(IDLE), Some(ms(2300 + 1500)));
    s.finish(second, ok(10), ms(2310), IDLE);
    assert_eq!(s.next_deadline(IDLE), Some(ms(3300)));
}

#[test]
fn h1_a_runner_replaced_before_its_app_ever_passed_names_the_startup_timeout() {
    let mut s = Scheduler::new(quick(), ms(0));
    for t in [1000, 2000] {
        regular_check(&mut s, ms(t), refused());
    }
    let actions = regular_check(&mut s, ms(3000), refused());
    let r = replacement(&actions).expect("third failure replaces");
    assert!(
        r.detail.contains("3 consecutive failed checks"),
        "{}",
        r.detail
    );
    assert!(
        r.detail.contains("the app never passed a check in its 3 s")
            && r.detail.contains("--startup-timeout-seconds")
            && r.detail.contains("the start period is now 0 s"),
        "{}",
        r.detail
    );
}

#[test]
fn h1_a_runner_that_passed_once_is_not_told_about_the_startup_timeout() {
    let mut s = Scheduler::new(quick(), ms(0));
    regular_check(&mut s, ms(1000), ok(5));
    for t in [2000, 3000] {
        regular_check(&mut s, ms(t), refused());
    }
    let actions = regular_check(&mut s, ms(4000), refused());
    let r = replacement(&actions).expect("third failure replaces");
    assert!(!r.detail.contains("startup-timeout"), "{}", r.detail);
}

#[test]
fn h4_threshold_consecutive_failures_replace() {
    let mut s = Scheduler::new(quick(), ms(0));
    regular_check(&mut s, ms(1000), status(500));
    regular_check(&mut s, ms(2000), refused());
    assert_eq!(s.failures(), 2);
    let actions = regular_check(&mut s, ms(3000), status(404));
    let r = replacement(&actions).expect("third failure replaces");
    assert_eq!(r.reason, Reason::HealthCheck);
    assert!(
        r.detail.contains("3 consecutive failed checks"),
        "{}",
        r.detail
    );
    assert!(r.detail.contains("status 404"), "{}", r.detail);
    // Verdict stops the schedule.
    assert_eq!(s.next_deadline(IDLE), None);
    assert!(s.tick(ms(10_000), IDLE).is_empty());
}

#[test]
fn h4_a_pass_between_failures_resets_the_count() {
    let mut s = Scheduler::new(quick(), ms(0));
    regular_check(&mut s, ms(1000), status(500));
    regular_check(&mut s, ms(2000), status(500));
    let out = outcomes(&regular_check(&mut s, ms(3000), ok(5)));
    assert_eq!(out[0].counted, Counted::Pass);
    assert_eq!(s.failures(), 0);
    regular_check(&mut s, ms(4000), status(500));
    let actions = regular_check(&mut s, ms(5000), status(500));
    assert!(replacement(&actions).is_none());
    assert_eq!(s.failures(), 2);
}

#[test]
fn h4_failures_inside_the_start_period_are_recorded_not_counted() {
    let settings = HealthSettings {
        start_period_seconds: 3,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    for at in [1000, 2000] {
        let out = outcomes(&regular_check(&mut s, ms(at), status(500)));
        assert_eq!(out[0].counted, Counted::StartPeriod);
    }
    assert_eq!(s.failures(), 0);
    assert_eq!(s.history().count(), 2);
}

#[test]
fn h4_a_failure_sent_exactly_at_the_end_of_the_start_period_counts() {
    let settings = HealthSettings {
        start_period_seconds: 2,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let out = outcomes(&regular_check(&mut s, ms(1000), status(500)));
    assert_eq!(out[0].counted, Counted::StartPeriod);
    let out = outcomes(&regular_check(&mut s, ms(2000), status(500)));
    assert_eq!(out[0].counted, Counted::Counted);
    assert_eq!(out[0].age, ms(2000));
    assert_eq!(s.failures(), 1);
}

#[test]
fn h4_a_check_sent_inside_the_start_period_is_judged_by_its_send_time() {
    // Sent at 1.9 s, times out at 2.4 s after the 2 s start period ended: still not counted.
    let settings = HealthSettings {
        start_period_seconds: 2,
        period_seconds: 1.9,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    started(&s.tick(ms(1900), IDLE)).unwrap();
    let out = outcomes(&s.tick(ms(2400), IDLE));
    assert_eq!(out[0].counted, Counted::StartPeriod);
}

#[test]
fn h1_start_period_raised_to_startup_timeout() {
    let settings = HealthSettings {
        start_period_seconds: 1,
        startup_timeout_seconds: 5.0,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    for at in [1000, 2000, 3000, 4000] {
        let out = outcomes(&regular_check(&mut s, ms(at), status(500)));
        assert_eq!(out[0].counted, Counted::StartPeriod, "at {at}");
    }
    let out = outcomes(&regular_check(&mut s, ms(5000), status(500)));
    assert_eq!(out[0].counted, Counted::Counted);
}

#[test]
fn h2_age_counts_from_the_app_start_when_supervised() {
    let settings = HealthSettings {
        start_period_seconds: 2,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    // The app starts 10 s after runwarden: its start period runs from there.
    s.restart_clock(ms(10_000));
    assert_eq!(s.age(ms(10_500)), ms(500));
    assert!(s.tick(ms(10_999), IDLE).is_empty());
    let out = outcomes(&regular_check(&mut s, ms(11_000), status(500)));
    assert_eq!(out[0].counted, Counted::StartPeriod);
    let out = outcomes(&regular_check(&mut s, ms(12_000), status(500)));
    assert_eq!(out[0].counted, Counted::Counted);
}

#[test]
fn h4_timeout_counts_as_failure_and_the_late_report_is_ignored() {
    let mut s = Scheduler::new(quick(), ms(0));
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    assert_eq!(s.next_deadline(IDLE), Some(ms(1500)));
    assert!(s.tick(ms(1499), IDLE).is_empty());
    let out = outcomes(&s.tick(ms(1500), IDLE));
    assert_eq!(out[0].report.error.as_deref(), Some("timed out after 0.5s"));
    assert_eq!(out[0].report.latency, ms(500));
    assert_eq!(out[0].counted, Counted::Counted);
    // The abandoned probe answers later: nothing happens.
    assert!(s.finish(id, ok(900), ms(1900), IDLE).is_empty());
    assert_eq!(s.failures(), 1);
}

#[test]
fn h5_gateway_trigger_starts_a_check_and_counts_under_h4() {
    let mut s = Scheduler::new(
        HealthSettings {
            call_regularly: false,
            ..quick()
        },
        ms(0),
    );
    let mut replaced = None;
    for n in 0..3u64 {
        let at = ms(100 + n * 300);
        let (answer, actions) = s.trigger(Trigger::Gateway, at);
        let id = started(&actions).expect("a new check");
        assert_eq!(answer, TriggerAnswer::Pending(id));
        let done = s.finish(id, status(500), at + ms(5), IDLE);
        assert_eq!(outcomes(&done)[0].triggers, vec![Trigger::Gateway]);
        replaced = replaced.or(replacement(&done));
    }
    assert_eq!(replaced.unwrap().reason, Reason::HealthCheck);
}

#[test]
fn h5_concurrent_triggers_share_one_running_check() {
    let mut s = Scheduler::new(quick(), ms(0));
    let (a, actions) = s.trigger(Trigger::Gateway, ms(100));
    let id = started(&actions).unwrap();
    let (b, more) = s.trigger(Trigger::Gateway, ms(101));
    let (c, extra) = s.trigger(Trigger::Extra, ms(102));
    assert!(more.is_empty() && extra.is_empty());
    assert_eq!(a, TriggerAnswer::Pending(id));
    assert_eq!(b, TriggerAnswer::Pending(id));
    assert_eq!(c, TriggerAnswer::Pending(id));
    let out = outcomes(&s.finish(id, ok(5), ms(105), IDLE));
    assert_eq!(out[0].triggers, vec![Trigger::Gateway, Trigger::Extra]);
}

#[test]
fn h5_triggers_are_rate_limited_to_the_latest_outcome() {
    let mut s = Scheduler::new(quick(), ms(0));
    let (_, actions) = s.trigger(Trigger::Gateway, ms(100));
    let id = started(&actions).unwrap();
    s.finish(id, ok(5), ms(105), IDLE);
    // Within trigger_interval (0.25 s) of the last finish: the latest outcome answers.
    let (answer, actions) = s.trigger(Trigger::Gateway, ms(300));
    assert!(actions.is_empty());
    match answer {
        TriggerAnswer::Latest(o) => assert_eq!(o.id, id),
        other => panic!("expected the latest outcome, got {other:?}"),
    }
    // After it: a new check.
    let (_, actions) = s.trigger(Trigger::Gateway, ms(355));
    assert!(started(&actions).is_some());
}

#[test]
fn s6_a_check_runwarden_could_not_send_is_never_counted_or_replacing() {
    let mut s = Scheduler::new(quick(), ms(0));
    for at in 1..=5 {
        let actions = regular_check(&mut s, ms(at * 1000), out_of_fds());
        assert_eq!(outcomes(&actions)[0].counted, Counted::Local);
        assert!(replacement(&actions).is_none());
    }
    assert_eq!(s.failures(), 0);
    // A manual check that cannot be sent does not replace either.
    let id = started(&s.manual(ms(6000))).unwrap();
    let actions = s.finish(id, out_of_fds(), ms(6001), IDLE);
    assert_eq!(outcomes(&actions)[0].counted, Counted::Local);
    assert!(replacement(&actions).is_none());
    // The app's own failures still count.
    regular_check(&mut s, ms(7000), refused());
    assert_eq!(s.failures(), 1);
}

#[test]
fn h6_manual_check_replaces_on_first_failure_ignoring_threshold_and_start_period() {
    let settings = HealthSettings {
        start_period_seconds: 600,
        failure_threshold: 10,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let id = started(&s.manual(ms(100))).unwrap();
    let actions = s.finish(id, status(500), ms(110), IDLE);
    assert_eq!(outcomes(&actions)[0].counted, Counted::Manual);
    let r = replacement(&actions).unwrap();
    assert_eq!(r.reason, Reason::ManualCheck);
    assert!(r.detail.contains("manual check"), "{}", r.detail);
}

#[test]
fn h6_manual_check_that_passes_changes_nothing() {
    let mut s = Scheduler::new(quick(), ms(0));
    let id = started(&s.manual(ms(100))).unwrap();
    let actions = s.finish(id, ok(3), ms(103), IDLE);
    assert!(replacement(&actions).is_none());
    assert!(s.life().ready());
}

#[test]
fn h6_manual_check_runs_fresh_after_a_running_check_and_coalesces() {
    let mut s = Scheduler::new(quick(), ms(0));
    let regular = started(&s.tick(ms(1000), IDLE)).unwrap();
    assert!(s.manual(ms(1001)).is_empty());
    assert!(s.manual(ms(1002)).is_empty());
    let actions = s.finish(regular, ok(10), ms(1010), IDLE);
    let manual = started(&actions).expect("the queued manual check starts");
    assert!(
        s.manual(ms(1011)).is_empty(),
        "coalesced into the running manual check"
    );
    let actions = s.finish(manual, status(500), ms(1020), IDLE);
    assert_eq!(outcomes(&actions)[0].triggers, vec![Trigger::Manual]);
    assert_eq!(replacement(&actions).unwrap().reason, Reason::ManualCheck);
}

#[test]
fn r1_503_replaces_and_r2_500_does_not() {
    let mut s = Scheduler::new(quick(), ms(0));
    assert!(s.response(404, ms(10)).is_empty());
    // R4: a 500 asks for one extra check, not a replacement.
    let actions = s.response(500, ms(20));
    assert!(replacement(&actions).is_none());
    let extra = started(&actions).unwrap();
    s.finish(extra, ok(2), ms(22), IDLE);
    let r = replacement(&s.response(503, ms(30))).unwrap();
    assert_eq!(r.reason, Reason::App503);
    // The first reason wins.
    assert!(s.drain(Reason::AppExited, "gone".into(), ms(40)).is_empty());
    assert_eq!(s.verdict().unwrap().reason, Reason::App503);
}

#[test]
fn r4_extra_checks_are_shared_and_rate_limited() {
    let mut s = Scheduler::new(quick(), ms(0));
    let id = started(&s.response(502, ms(10))).unwrap();
    assert!(s.response(504, ms(11)).is_empty());
    s.finish(id, ok(2), ms(12), IDLE);
    assert!(
        s.response(500, ms(100)).is_empty(),
        "within trigger_interval"
    );
    assert!(started(&s.response(500, ms(300))).is_some());
}

#[test]
fn h8_history_is_bounded() {
    let settings = HealthSettings {
        history_size: 3,
        failure_threshold: 100,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    for n in 1..=5u64 {
        regular_check(&mut s, ms(n * 1000), status(500));
    }
    let ids: Vec<u64> = s.history().map(|o| o.id).collect();
    assert_eq!(ids, vec![3, 4, 5]);
}

#[test]
fn h9_allow_on_busy_records_failures_while_bytes_move() {
    let settings = HealthSettings {
        allow_on_busy: true,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    let busy = Traffic {
        in_flight: 2,
        last_progress: Some(ms(1000)),
        ..IDLE
    };
    let out = outcomes(&s.finish(id, status(500), ms(1400), busy));
    assert_eq!(out[0].counted, Counted::Busy);
    assert_eq!(s.failures(), 0);
    // In flight but silent for longer than timeout_seconds: counted.
    let id = started(&s.tick(ms(2000), IDLE)).unwrap();
    let silent = Traffic {
        in_flight: 2,
        last_progress: Some(ms(1400)),
        ..IDLE
    };
    let out = outcomes(&s.finish(id, status(500), ms(2000), silent));
    assert_eq!(out[0].counted, Counted::Counted);
}

#[test]
fn h9_busy_is_not_excused_without_allow_on_busy() {
    let mut s = Scheduler::new(quick(), ms(0));
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    let busy = Traffic {
        in_flight: 1,
        last_progress: Some(ms(1000)),
        ..IDLE
    };
    let out = outcomes(&s.finish(id, status(500), ms(1001), busy));
    assert_eq!(out[0].counted, Counted::Counted);
}

#[test]
fn h9_stall_replaces_when_in_flight_requests_move_nothing() {
    let settings = HealthSettings {
        stall_seconds: Some(2.0),
        period_seconds: 100.0,
        startup_check_seconds: 100.0, // no K3 probe in the way
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let traffic = Traffic {
        in_flight: 1,
        last_progress: Some(ms(500)),
        ..IDLE
    };
    assert_eq!(s.next_deadline(traffic), Some(ms(2500)));
    assert!(s.tick(ms(2499), traffic).is_empty());
    let r = replacement(&s.tick(ms(2500), traffic)).unwrap();
    assert_eq!(r.reason, Reason::Stalled);
    assert!(r.detail.contains("moved no byte for 2s"), "{}", r.detail);
}

#[test]
fn h9_time_blocked_on_the_client_does_not_count_toward_a_stall() {
    let settings = HealthSettings {
        stall_seconds: Some(2.0),
        period_seconds: 100.0,
        startup_check_seconds: 100.0, // no K3 probe in the way
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    // The app last moved a byte at 0.5 s; the request then waited on its client until 5 s.
    let traffic = Traffic {
        in_flight: 1,
        last_progress: Some(ms(500)),
        last_resumed: Some(ms(5000)),
    };
    assert_eq!(s.next_deadline(traffic), Some(ms(7000)));
    assert!(s.tick(ms(6999), traffic).is_empty());
    assert_eq!(
        replacement(&s.tick(ms(7000), traffic)).unwrap().reason,
        Reason::Stalled
    );
}

#[test]
fn h9_bytes_from_the_client_do_not_make_the_app_busy() {
    let settings = HealthSettings {
        allow_on_busy: true,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    let trickling = Traffic {
        in_flight: 1,
        last_progress: Some(ms(0)),
        last_resumed: Some(ms(1000)),
    };
    let out = outcomes(&s.finish(id, status(500), ms(1001), trickling));
    assert_eq!(out[0].counted, Counted::Counted);
}

#[test]
fn h9_no_stall_without_requests_in_flight() {
    let settings = HealthSettings {
        stall_seconds: Some(2.0),
        period_seconds: 100.0,
        startup_check_seconds: 100.0, // no K3 probe in the way
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let idle = Traffic {
        in_flight: 0,
        last_progress: Some(ms(0)),
        ..IDLE
    };
    assert!(s.tick(ms(50_000), idle).is_empty());
}

#[test]
fn after_replacement_a_running_check_is_recorded_but_changes_nothing() {
    let mut s = Scheduler::new(quick(), ms(0));
    let id = started(&s.tick(ms(1000), IDLE)).unwrap();
    s.response(503, ms(1001));
    let out = outcomes(&s.finish(id, status(500), ms(1002), IDLE));
    assert_eq!(out[0].counted, Counted::AfterReplace);
    assert_eq!(s.failures(), 0);
}

#[test]
fn trim_float_writes_seconds_plainly() {
    assert_eq!(trim_float(0.3), "0.3");
    assert_eq!(trim_float(5.0), "5");
    assert_eq!(trim_float(0.125), "0.125");
}

#[test]
fn d4_a_clean_stop_is_a_verdict_like_a_replacement_and_the_first_wins() {
    let mut s = Scheduler::new(quick(), ms(0));
    regular_check(&mut s, ms(1000), ok(5));
    assert!(s.life().ready());
    let actions = s.drain(Reason::Shutdown, "received SIGTERM".into(), ms(1500));
    assert_eq!(replacement(&actions).unwrap().reason, Reason::Shutdown);
    assert!(!s.life().ready());
    // A later 503 changes nothing: the verdict, the state and the exit code stay the stop's.
    assert!(s.response(503, ms(1600)).is_empty());
    assert_eq!(s.verdict().unwrap().reason, Reason::Shutdown);
    assert_eq!(s.life().state(), "stopping");
    assert_eq!(s.stop(), Some(0));
    assert_eq!(s.life().state(), "stopped");
    // Checks are no longer scheduled.
    assert_eq!(s.next_deadline(IDLE), None);
}

#[test]
fn k3_until_the_first_pass_inside_the_start_period_checks_run_at_the_startup_interval() {
    let settings = HealthSettings {
        start_period_seconds: 30,
        period_seconds: 15.0,
        startup_check_seconds: 0.5,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    assert_eq!(s.next_deadline(IDLE), Some(ms(500)));
    let out = outcomes(&regular_check(&mut s, ms(500), refused()));
    assert_eq!(out[0].counted, Counted::StartPeriod);
    assert_eq!(s.next_deadline(IDLE), Some(ms(1000)));
    let out = outcomes(&regular_check(&mut s, ms(1000), ok(10)));
    assert!(out[0].made_ready && s.life().ready());
    // Ready: the period again, from the check that passed.
    assert_eq!(s.next_deadline(IDLE), Some(ms(16_000)));
}

#[test]
fn k3_the_startup_interval_ends_with_the_start_period_so_counting_is_unchanged() {
    let settings = HealthSettings {
        start_period_seconds: 2,
        period_seconds: 15.0,
        startup_check_seconds: 0.5,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    for at in [500, 1000, 1500] {
        let out = outcomes(&regular_check(&mut s, ms(at), refused()));
        assert_eq!(out[0].counted, Counted::StartPeriod, "at {at}");
    }
    let out = outcomes(&regular_check(&mut s, ms(2000), refused()));
    assert_eq!(out[0].counted, Counted::Counted);
    // Until the first pass K3's probes go on between the regular checks, uncounted: failures
    // count only at the period, so no replacement comes sooner than without K3.
    for at in [2500, 3000] {
        let out = outcomes(&regular_check(&mut s, ms(at), refused()));
        assert_eq!(out[0].triggers, vec![Trigger::Startup]);
        assert_eq!(out[0].counted, Counted::NotReady, "at {at}");
    }
    assert_eq!(s.failures(), 1);
    let out = outcomes(&regular_check(&mut s, ms(3500), ok(5)));
    assert!(out[0].made_ready, "ready half a second after the app");
    assert_eq!(
        s.next_deadline(IDLE),
        Some(ms(18_500)),
        "then the period, from the pass"
    );
}

#[test]
fn k3_with_a_start_period_of_0_readiness_still_follows_the_app_within_a_second() {
    let settings = HealthSettings {
        start_period_seconds: 0,
        period_seconds: 15.0,
        startup_check_seconds: 0.5,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let out = outcomes(&regular_check(&mut s, ms(500), refused()));
    assert_eq!(
        out[0].counted,
        Counted::NotReady,
        "a K3 probe's failure is not counted"
    );
    let out = outcomes(&regular_check(&mut s, ms(1000), ok(5)));
    assert!(out[0].made_ready);
}

#[test]
fn k3_with_a_start_period_of_0_failures_count_at_the_period() {
    let settings = HealthSettings {
        start_period_seconds: 0,
        period_seconds: 2.0,
        startup_check_seconds: 0.5,
        failure_threshold: 2,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let mut counted = Vec::new();
    let mut at = 0;
    while s.verdict().is_none() && at < 10_000 {
        at = s.next_deadline(IDLE).unwrap().as_millis() as u64;
        for o in outcomes(&regular_check(&mut s, ms(at), refused())) {
            if o.counted == Counted::Counted {
                counted.push(at);
            }
        }
    }
    assert_eq!(counted, vec![2000, 4000], "counted at the period only");
    assert_eq!(s.verdict().unwrap().reason, Reason::HealthCheck);
}

#[test]
fn k3_startup_probes_use_the_startup_interval_when_call_regularly_is_false() {
    let settings = HealthSettings {
        call_regularly: false,
        start_period_seconds: 30,
        period_seconds: 15.0,
        startup_check_seconds: 0.5,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let out = outcomes(&regular_check(&mut s, ms(500), refused()));
    assert_eq!(out[0].triggers, vec![Trigger::Startup]);
    regular_check(&mut s, ms(1000), ok(5));
    assert!(s.life().ready());
    assert_eq!(s.next_deadline(IDLE), None);
}

#[test]
fn k2_restart_after_a_replacement_starts_over_with_no_failure_counted() {
    let mut s = Scheduler::new(quick(), ms(0));
    regular_check(&mut s, ms(1000), ok(5));
    for at in [2000, 3000, 4000] {
        regular_check(&mut s, ms(at), status(500));
    }
    assert_eq!(s.verdict().unwrap().reason, Reason::HealthCheck);
    assert!(s.restart(ms(10_000)));
    assert!(s.verdict().is_none() && !s.life().ready());
    assert_eq!(s.failures(), 0);
    assert_eq!(s.age(ms(10_500)), ms(500));
    assert_eq!(s.history().count(), 4, "the history stays");
    assert_eq!(s.next_deadline(IDLE), Some(ms(11_000)));
    let out = outcomes(&regular_check(&mut s, ms(11_000), ok(5)));
    assert!(out[0].made_ready);
    s.drain(Reason::Shutdown, "SIGTERM".into(), ms(12_000));
    assert!(!s.restart(ms(12_000)), "a clean stop is not undone");
}

fn exclusive(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|a| match a {
        Action::StartCheck { exclusive, .. } => Some(*exclusive),
        _ => None,
    })
}

#[test]
fn q1_checks_are_exclusive_once_ready_and_never_time_out_while_they_wait_for_the_runner() {
    let settings = HealthSettings {
        exclusive_checks: Some(true),
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    let first = s.tick(ms(1000), IDLE);
    assert_eq!(
        exclusive(&first),
        Some(false),
        "a start-up probe runs as it comes"
    );
    s.finish(started(&first).unwrap(), ok(5), ms(1005), IDLE);
    let second = s.tick(ms(2000), IDLE);
    assert_eq!(exclusive(&second), Some(true));
    let id = started(&second).unwrap();
    // Waiting for the window: no timeout, and the next regular check waits for this one.
    assert!(s.tick(ms(10_000), IDLE).is_empty());
    s.began(id, ms(10_000));
    assert_eq!(
        s.next_deadline(IDLE),
        Some(ms(10_500)),
        "the timeout counts from began"
    );
    let out = outcomes(&s.tick(ms(10_500), IDLE));
    assert_eq!(
        out[0].counted,
        Counted::Counted,
        "a timeout in the window still counts"
    );
}

#[test]
fn q1_a_check_that_could_not_have_the_runner_is_busy_not_counted_even_when_manual() {
    let settings = HealthSettings {
        exclusive_checks: Some(true),
        failure_threshold: 1,
        ..quick()
    };
    let mut s = Scheduler::new(settings, ms(0));
    regular_check(&mut s, ms(1000), ok(5));
    let manual = s.manual(ms(1500));
    let id = started(&manual).unwrap();
    let actions = s.busy(id, "2 requests at the app".into(), ms(30_000), ms(31_500));
    let out = outcomes(&actions);
    assert_eq!(out[0].counted, Counted::Busy);
    assert!(replacement(&actions).is_none());
    assert_eq!(s.failures(), 0);
}

#[test]
fn q1_exclusive_checks_default_to_not_call_regularly() {
    let regular = HealthSettings::default();
    assert!(!regular.exclusive());
    let on_request = HealthSettings {
        call_regularly: false,
        ..Default::default()
    };
    assert!(on_request.exclusive());
    let overridden = HealthSettings {
        call_regularly: false,
        exclusive_checks: Some(false),
        ..Default::default()
    };
    assert!(!overridden.exclusive());
}
