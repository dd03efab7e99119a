"""SPEC H end to end: the Rust core's checks against a real app process, on loopback.

Settings are short (period 0.2 s, timeout 0.3 s) so each rule shows in about a second.
Times are read from the outcomes' own `age_seconds` (the core's clock), so the bounds
hold on a busy machine without sleeps that hope.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
import runwarden
from conftest import AppServer, Runwarden, free_port
from runwarden import CheckOutcome, HealthSettings, Verdict, Warden

T = TypeVar("T")

QUICK: dict[str, Any] = dict(
    start_period_seconds=0,
    period_seconds=0.2,
    timeout_seconds=0.3,
    failure_threshold=3,
    trigger_interval_seconds=0.1,
)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro_fn(), timeout=30)

    return asyncio.run(main())


async def collect(warden: Warden, count: int) -> list[CheckOutcome]:
    """Wait for `count` finished checks."""
    seen: list[CheckOutcome] = []
    done = asyncio.get_running_loop().create_future()

    def listener(outcome: CheckOutcome) -> None:
        seen.append(outcome)
        if len(seen) == count and not done.done():
            done.set_result(None)

    unsubscribe = warden.on_outcome(listener)
    try:
        await done
    finally:
        unsubscribe()
    return seen


async def started(app_url: str, **settings: Any) -> Warden:
    warden = Warden(HealthSettings(**{**QUICK, **settings}), app_url)
    await warden.start()
    return warden


def test_H3_checks_run_every_period_the_first_one_period_after_start(app_server: AppServer) -> None:
    async def scenario() -> list[CheckOutcome]:
        warden = await started(app_server.url)
        outcomes = await collect(warden, 4)
        await warden.stop()
        return outcomes

    outcomes = run(scenario)
    assert all(o.passed and o.triggers == ["regular"] for o in outcomes)
    ages = [o.age_seconds for o in outcomes]
    assert ages[0] == pytest.approx(0.2, abs=0.05)
    gaps = [b - a for a, b in itertools.pairwise(ages)]
    assert all(g == pytest.approx(0.2, abs=0.05) for g in gaps), ages


def test_H4_threshold_failures_replace_and_the_reason_says_why(app_server: AppServer) -> None:
    app_server.set_health("fail500")

    async def scenario() -> tuple[Verdict, list[CheckOutcome]]:
        warden = await started(app_server.url)
        verdict = await warden.decided()
        history = warden.history()
        await warden.stop()
        return verdict, history

    verdict, history = run(scenario)
    assert verdict.reason == "health_check"
    assert "3 consecutive failed checks" in verdict.detail
    assert "status 500" in verdict.detail
    assert [o.counted for o in history] == ["counted"] * 3
    # Third failure of checks at 0.2, 0.4, 0.6 s.
    assert verdict.age_seconds == pytest.approx(0.6, abs=0.1)


def test_H1_H4_failures_inside_the_start_period_are_recorded_not_counted(
    app_server: AppServer,
) -> None:
    app_server.set_health("fail500")

    async def scenario() -> tuple[Verdict, list[CheckOutcome]]:
        # start_period 0 but a startup timeout of 0.7 s: H1 raises the start period to it.
        warden = await started(app_server.url, startup_timeout_seconds=0.7)
        verdict = await warden.decided()
        history = warden.history()
        await warden.stop()
        return verdict, history

    verdict, history = run(scenario)
    young = [o for o in history if o.age_seconds < 0.7]
    old = [o for o in history if o.age_seconds >= 0.7]
    assert young and all(o.counted == "start_period" for o in young)
    assert [o.counted for o in old] == ["counted"] * 3
    assert verdict.age_seconds == pytest.approx(old[-1].age_seconds, abs=0.05)


def test_H4_a_pass_between_failures_resets_the_count(app_server: AppServer) -> None:
    app_server.set_health("fail500")

    async def scenario() -> list[CheckOutcome]:
        warden = await started(app_server.url)
        seen = await collect(warden, 2)
        app_server.set_health("pass")
        seen += await collect(warden, 1)
        app_server.set_health("fail500")
        seen += await collect(warden, 2)
        assert warden.verdict is None, "two failures after a pass do not replace"
        await warden.stop()
        return seen

    outcomes = run(scenario)
    assert [o.consecutive_failures for o in outcomes] == [1, 2, 0, 1, 2]
    assert [o.counted for o in outcomes] == ["counted", "counted", "pass", "counted", "counted"]


def test_H4_a_hung_check_times_out_and_counts(app_server: AppServer) -> None:
    app_server.set_health("hang")

    async def scenario() -> tuple[Verdict, list[CheckOutcome]]:
        warden = await started(app_server.url)
        verdict = await warden.decided()
        history = warden.history()
        await warden.stop()
        return verdict, history

    verdict, history = run(scenario)
    assert verdict.reason == "health_check"
    for outcome in history:
        assert outcome.error == "timed out after 0.3s"
        assert outcome.latency_seconds == pytest.approx(0.3, abs=0.01)
    # Checks never overlap: each starts after the previous timed out (0.2, 0.5, 0.8 s).
    ages = [o.age_seconds for o in history]
    assert [round(b - a, 1) for a, b in itertools.pairwise(ages)] == [0.3, 0.3]
    assert verdict.age_seconds == pytest.approx(1.1, abs=0.1)


def test_H4_connection_refused_counts_as_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> tuple[Verdict, list[CheckOutcome]]:
        warden = await started(url)
        verdict = await warden.decided()
        return verdict, warden.history()

    verdict, history = run(scenario)
    assert verdict.reason == "health_check"
    assert {o.error for o in history} == {"connection refused"}


def test_H4_the_app_process_gone_is_noticed(app_server: AppServer) -> None:
    async def scenario() -> Verdict:
        warden = await started(app_server.url)
        await collect(warden, 1)
        app_server.kill()
        return await warden.decided()

    verdict = run(scenario)
    assert verdict.reason == "health_check"
    assert "connection refused" in verdict.detail


def test_H2_age_counts_from_the_supervised_apps_start(app_server: AppServer) -> None:
    app_server.set_health("fail500")

    async def scenario() -> Verdict:
        warden = await started(app_server.url, start_period_seconds=1)
        await asyncio.sleep(0.5)
        warden.app_started()
        return await warden.decided()

    verdict = run(scenario)
    # Start period 1 s from the app's start (0.5 s in), then three counted failures (about
    # 1.4 s). Counted from runwarden's start instead, the verdict would come at an app age
    # near 0.9 s: the lower bound is what tells them apart; the upper one leaves a shared
    # machine its margin.
    assert verdict.age_seconds >= 1.0
    assert verdict.age_seconds < 3.0


def test_H5_without_call_regularly_checks_run_only_on_request(app_server: AppServer) -> None:
    async def scenario() -> tuple[list[CheckOutcome], CheckOutcome, int]:
        warden = await started(app_server.url, call_regularly=False)
        # Until the first pass, startup probes open readiness.
        await collect(warden, 1)
        assert warden.snapshot()["ready"]
        before = int(app_server.state()["health_calls"])  # type: ignore[call-overload]
        await asyncio.sleep(0.7)
        idle_calls = int(app_server.state()["health_calls"]) - before  # type: ignore[call-overload]
        app_server.set_health("fail500")
        # Concurrent triggers share one check.
        shared = await asyncio.gather(*(warden.check("gateway") for _ in range(5)))
        await asyncio.sleep(0.15)
        again = await warden.check("gateway")
        return shared, again, idle_calls

    shared, again, idle_calls = run(scenario)
    assert idle_calls == 0
    assert len({o.id for o in shared}) == 1
    assert shared[0].triggers == ["gateway"]
    assert shared[0].counted == "counted" and not shared[0].passed
    assert again.id != shared[0].id


def test_H5_triggers_are_rate_limited(app_server: AppServer) -> None:
    async def scenario() -> list[CheckOutcome]:
        warden = await started(app_server.url, call_regularly=False, trigger_interval_seconds=5)
        first = await warden.check("gateway")
        flood = [await warden.check("gateway") for _ in range(50)]
        return [first, *flood]

    outcomes = run(scenario)
    assert len({o.id for o in outcomes}) == 1


def test_H6_manual_check_replaces_on_first_failure_ignoring_start_period(
    app_server: AppServer,
) -> None:
    async def scenario() -> Verdict:
        warden = await started(
            app_server.url, start_period_seconds=600, failure_threshold=10, period_seconds=60
        )
        app_server.set_health("fail503")
        began = time.monotonic()
        warden.manual_check()
        verdict = await warden.decided()
        assert time.monotonic() - began < 0.3
        return verdict

    verdict = run(scenario)
    assert verdict.reason == "manual_check"
    assert "status 503" in verdict.detail


def test_H8_history_is_bounded(app_server: AppServer) -> None:
    async def scenario() -> list[CheckOutcome]:
        warden = await started(app_server.url, history_size=3, period_seconds=0.05)
        await collect(warden, 6)
        return warden.history()

    history = run(scenario)
    assert len(history) == 3
    assert [b.id - a.id for a, b in itertools.pairwise(history)] == [1, 1]


def test_H9_allow_on_busy_excuses_failures_while_bytes_move(
    app_server: AppServer, runwarden: Callable[..., Runwarden]
) -> None:
    """H9: with allow_on_busy, checks that fail while a proxied response keeps moving bytes
    are recorded as `busy`, never counted; the data plane reports the bytes to the core."""
    rw = runwarden(app_server.url, "--allow-on-busy", "--failure-threshold", "2",
                   wait_ready=True)  # fmt: skip
    app_server.set_health("fail500")
    params = {"events": "40", "interval": "0.05"}  # 2 s of events, ten check periods
    history = None
    began = time.monotonic()
    with httpx.stream("GET", f"{rw.url}/sse", params=params, timeout=10) as response:
        for _ in response.iter_raw():
            # The checks that ended while the stream was open (one ending after it, with
            # nothing in flight, is counted, as it should be).
            if history is None and time.monotonic() - began > 1.5:
                history = rw.status()["checks"]
    assert history is not None, "the stream ended before 1.5 s"
    checks = [c for c in history if not c["passed"]]  # type: ignore[union-attr]
    assert checks and {c["counted"] for c in checks} == {"busy"}, checks
    assert rw.proc.poll() is None


def test_H9_stalled_requests_replace(
    app_server: AppServer, runwarden: Callable[..., Runwarden]
) -> None:
    """H9: a proxied request the app holds without a byte for stall_seconds replaces the
    runner, at stall_seconds (the core's clock), not at the next check."""
    rw = runwarden(app_server.url, "--stall-seconds", "0.4", "--period-seconds", "60")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{rw.url}/hold", params={"seconds": "10"}, timeout=5)
    assert rw.wait_exit() == 14
    assert "moved no byte for 0.4s" in rw.log()
    since = re.search(r"replacing the runner: stalled \(.*\)", rw.log())
    assert since, rw.log()


def test_a_hanging_check_never_blocks_the_event_loop(app_server: AppServer) -> None:
    """The core waits on its own threads: while a check hangs, the loop's lag stays tiny."""
    app_server.set_health("hang")

    async def scenario() -> list[float]:
        warden = await started(app_server.url, period_seconds=0.05, timeout_seconds=10.0)
        hung: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def watch_app() -> None:
            running = warden.snapshot()["running_check"]
            if isinstance(running, int) and app_server.state()["health_calls"]:
                hung.set_result(running)
            else:
                asyncio.get_running_loop().call_later(0.01, watch_app)

        watch_app()
        check_id = await asyncio.wait_for(hung, 10)  # the app holds this check unanswered
        lags = []
        began_all = time.perf_counter()
        while time.perf_counter() - began_all < 0.5:
            began = time.perf_counter()
            await asyncio.sleep(0.002)
            lags.append(time.perf_counter() - began - 0.002)
        assert warden.snapshot()["running_check"] == check_id, "the same check still hangs"
        stop_began = time.monotonic()
        await warden.stop()
        assert time.monotonic() - stop_began < 1.0, "stop does not wait for the hung probe"
        return lags

    lags = run(scenario)
    p99 = statistics.quantiles(lags, n=100)[98]
    assert p99 < 0.005, f"event-loop lag p99 {p99 * 1000:.2f} ms while a check hangs"


def test_H7_bad_settings_raise_a_clear_error() -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "failure_threshold": (dict(failure_threshold=0), "failure_threshold must be"),
        "timeout": (dict(timeout_seconds=-1), "timeout_seconds must be a finite number > 0"),
        "not a number": (dict(period_seconds="15"), "period_seconds must be a number"),
        "unknown": (dict(retries=3), 'unknown setting "retries"'),
        "bool": (dict(failure_threshold=True), "failure_threshold must be an integer"),
        "path": (dict(health_path="health"), "health_path must be a path starting with '/'"),
        "method": (dict(health_method="PUT"), "health_method must be GET or POST"),
    }
    for name, (kwargs, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            HealthSettings(**kwargs)
        with pytest.raises(runwarden.SettingsError):
            HealthSettings(**kwargs)
        assert name
    with pytest.raises(runwarden.SettingsError, match="app_url must be"):
        runwarden.Core(HealthSettings(), "localhost:8000")


def test_H7_defaults_are_the_specs() -> None:
    h = HealthSettings()
    assert (h.start_period_seconds, h.timeout_seconds, h.failure_threshold) == (30, 5.0, 3)
    assert h.call_regularly is True and h.period_seconds == 15.0
    assert h.effective_start_period_seconds == 30.0
    assert "start_period_seconds=30" in repr(h)


def test_dropping_a_running_core_does_not_hang_interpreter_exit(app_server: AppServer) -> None:
    """A Core left running (a check hanging in its probe) never holds up interpreter exit:
    its threads take no GIL, and dropping it stops them within a bound."""
    app_server.set_health("hang")
    script = (
        "import time, runwarden\n"
        "core = runwarden.Core(runwarden.HealthSettings(period_seconds=0.05, timeout_seconds=30,"
        f" start_period_seconds=0), {app_server.url!r})\n"
        "core.start()\n"
        "deadline = time.monotonic() + 10\n"
        "while core.state()['running_check'] is None:\n"
        "    assert time.monotonic() < deadline, 'no check started'\n"
        "    time.sleep(0.01)\n"
    )
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)
    assert time.monotonic() - began < 5.0, "exit waited for the hung check"
