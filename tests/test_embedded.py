"""SPEC E: runwarden inside the app's own process, shown on real uvicorn processes on
loopback: the Starlette app of `embedded_app.py` with `Runwarden` added by
`add_middleware` and configured only by RUNWARDEN_* (as vLLM's `--middleware` gives it),
under plain `uvicorn`, under `runwarden run`, and under a server that runs uvicorn itself
(vLLM's `serve_http`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import HERE, Runwarden, clean_env, free_port, poll, wait_until_listening
from runwarden import exit_codes

SHORT = {
    "RUNWARDEN_PERIOD_SECONDS": "0.2",
    "RUNWARDEN_TIMEOUT_SECONDS": "0.5",
    "RUNWARDEN_START_PERIOD_SECONDS": "0",
    "RUNWARDEN_TRIGGER_INTERVAL_SECONDS": "0.1",
    "RUNWARDEN_DRAIN_TIMEOUT_SECONDS": "5",
    "RUNWARDEN_ADMIN_HOST": "127.0.0.1",
    "RUNWARDEN_TERMINATION_MESSAGE_PATH": "off",
}
CHECK = "x-fal-runner-health-check"


class Server(Runwarden):
    """A server process with runwarden inside (`port` is the app's own); its test app's
    controls."""

    def state(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.url}/_control/state", timeout=5).json())

    def set_health(self, mode: str) -> None:
        httpx.post(f"{self.url}/_control/health", json={"mode": mode}, timeout=5)


def at_the_app(server: Server, path: str) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    """A request to `path` on a thread of its own, returned once it is at the app; its
    response lands in the dict under "r"."""
    result: dict[str, httpx.Response] = {}
    client = threading.Thread(
        target=lambda: result.setdefault("r", httpx.get(f"{server.url}{path}", timeout=15))
    )
    client.start()
    poll(lambda: server.state()["at_app"] == 1, 5)
    return client, result


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory: `serve(how, **env)` starts `embedded_app` under `how` ("uvicorn", "run",
    "vllm"), waits until it listens, and stops it at the end."""
    started: list[Server] = []

    def start(how: str = "uvicorn", *extra: str, listen: bool = True, **env: str) -> Server:
        port, admin_port = free_port(), free_port()
        commands = {
            "uvicorn": [sys.executable, "-m", "uvicorn", "embedded_app:app",
                        "--host", "127.0.0.1", "--port", str(port)],
            "run": [sys.executable, "-m", "runwarden", "run", "embedded_app:bare",
                    "--host", "127.0.0.1", "--port", str(port)],
            "vllm": [sys.executable, str(HERE / "embedded_vllm_style.py"), str(port)],
        }  # fmt: skip
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*commands[how], *extra],
                cwd=HERE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=clean_env(**{**SHORT, "RUNWARDEN_ADMIN_PORT": str(admin_port), **env}),
                start_new_session=True,  # its workers, if any, are stopped with it
            )
        server = Server(proc, port, admin_port, log_path)
        started.append(server)
        if listen:
            try:
                wait_until_listening(port, proc)
            except (RuntimeError, TimeoutError):
                raise AssertionError(f"the server did not start:\n{server.log()}") from None
        return server

    try:
        yield start
    finally:
        for server in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)


def test_E2_ready_and_serving_with_settings_from_the_environment_only(serve) -> None:
    """E2, A: `add_middleware(Runwarden)` with no arguments, RUNWARDEN_* only (as vLLM's
    --middleware gives it): /readyz once the first check passed, requests served, and
    /status says where each setting came from."""
    server = serve()
    server.wait_ready()
    answer = httpx.get(f"{server.url}/work", timeout=5)
    assert answer.status_code == 200 and answer.json()["ok"]
    status = httpx.get(f"{server.admin_url}/status", timeout=5).json()
    assert status["app"]["mode"] == "embedded"
    assert status["health"]["health_url"] == "asgi:/health"
    assert status["setting_sources"]["period_seconds"] == "environment"
    assert status["settings"]["period_seconds"] == 0.2
    # E3: the marked route's declaration fills what it sets.
    assert status["settings"]["failure_threshold"] == 2
    assert status["setting_sources"]["failure_threshold"] == "option"
    metrics = httpx.get(f"{server.admin_url}/metrics", timeout=5).text
    assert 'runwarden_proxied_requests_total{source="app",status="200"}' in metrics


def test_R1_E5_a_503_replaces_the_runner_and_the_process_exits_12(serve) -> None:
    server = serve()
    server.wait_ready()
    answer = httpx.get(f"{server.url}/work?status=503", timeout=5)
    assert answer.status_code == 503  # R1: forwarded unchanged
    assert server.wait_exit() == exit_codes.BY_REASON["app_503"] == 12
    log = server.log()
    assert "exiting with code 12 (app_503): the app answered 503" in log
    assert log.count("exiting with code") == 1


def test_H4_E5_failing_checks_replace_the_runner_exit_10(serve) -> None:
    server = serve()
    server.wait_ready()
    server.set_health("fail")
    assert server.wait_exit() == 10
    assert "2 consecutive failed checks" in server.log()  # the marked route's threshold


def test_E4_a_blocked_event_loop_fails_its_checks_by_timeout_exit_10(serve) -> None:
    """E4: the check goes through the app's own loop; synchronous code that blocks it makes
    the checks time out, as a hung server's would."""
    server = serve()
    server.wait_ready()
    blocked = threading.Thread(
        target=lambda: httpx.get(f"{server.url}/block?seconds=4", timeout=10), daemon=True
    )
    blocked.start()
    assert server.wait_exit() == 10
    assert "timed out after 0.5s" in server.log()


def test_H5_a_gateway_check_is_answered_by_runwarden_not_the_endpoint(serve) -> None:
    server = serve()
    server.wait_ready()
    served = server.state()["served"]
    answer = httpx.get(f"{server.url}/work", headers={CHECK: "1"}, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["passed"] is True
    assert answer.json()["check"]["status"] == 200
    assert server.state()["served"] == served  # /work never saw it


def test_H5_an_untrusted_peers_check_header_is_removed_and_the_request_served(serve) -> None:
    server = serve(RUNWARDEN_CHECK_TRUSTED_SOURCES="10.9.8.7/32")
    server.wait_ready()
    answer = httpx.get(f"{server.url}/work", headers={CHECK: "1"}, timeout=5)
    assert answer.status_code == 200 and answer.json()["ok"]
    assert CHECK not in answer.json()["headers"]


def test_H6_a_response_asking_a_check_loses_the_header_and_its_failure_exits_11(serve) -> None:
    # No regular check in the way: only the one the response asks for.
    server = serve(RUNWARDEN_PERIOD_SECONDS="600")
    server.wait_ready()
    server.set_health("fail")
    answer = httpx.get(f"{server.url}/work?ask_check=1", timeout=5)
    assert answer.status_code == 200
    assert CHECK not in answer.headers
    assert server.wait_exit() == 11
    assert "(manual_check)" in server.log()


def test_D2_E5_sigterm_lets_the_request_in_flight_finish_and_exits_0(serve) -> None:
    server = serve()
    server.wait_ready()
    client, result = at_the_app(server, "/work?delay=1")
    server.proc.send_signal(signal.SIGTERM)
    client.join(10)
    assert result["r"].status_code == 200
    assert server.wait_exit() == 0
    assert "exiting with code 0 (shutdown)" in server.log()


def test_Q2_max_concurrency_1_never_has_two_requests_at_the_app(serve) -> None:
    server = serve(RUNWARDEN_MAX_CONCURRENCY="1")
    server.wait_ready()
    results: list[int] = []

    def one() -> None:
        results.append(httpx.get(f"{server.url}/work?delay=0.2", timeout=10).status_code)

    clients = [threading.Thread(target=one) for _ in range(5)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(15)
    assert results == [200] * 5
    assert server.state()["most_at_app"] == 1
    door = httpx.get(f"{server.admin_url}/status", timeout=5).json()["door"]
    assert door["admitted"] >= 5 and door["at_app"] == 0


def test_Q2_a_full_queue_is_answered_by_runwarden_never_the_app(serve) -> None:
    server = serve(RUNWARDEN_MAX_CONCURRENCY="1", RUNWARDEN_MAX_QUEUE="0")
    server.wait_ready()
    first = threading.Thread(
        target=lambda: httpx.get(f"{server.url}/work?delay=1", timeout=10), daemon=True
    )
    first.start()
    door = lambda: httpx.get(f"{server.admin_url}/status", timeout=5).json()["door"]  # noqa: E731
    poll(lambda: door()["at_app"] == 1, 5)
    answer = httpx.get(f"{server.url}/work", timeout=5)
    assert answer.status_code == 503
    assert answer.headers["x-runwarden-overloaded"] == "queue_full"
    assert answer.headers["retry-after"] == "1"
    first.join(5)
    assert door()["refused"]["queue_full"] == 1
    assert server.proc.poll() is None, "runwarden's own 503 never replaces the runner"


def test_Q3_a_request_past_its_timeout_gets_504_and_its_task_is_cancelled(serve) -> None:
    server = serve(RUNWARDEN_REQUEST_TIMEOUT_SECONDS="0.3")
    server.wait_ready()
    started = time.monotonic()
    answer = httpx.get(f"{server.url}/work?delay=3", timeout=10)
    assert answer.status_code == 504
    assert time.monotonic() - started < 2
    poll(lambda: server.state()["at_app"] == 0, 5)  # the app's task was cancelled
    assert server.proc.poll() is None


def test_E3_two_marked_health_checks_stop_start_up_naming_both(serve) -> None:
    server = serve(listen=False, EMBEDDED_TWO_MARKS="1")
    code = server.wait_exit()
    assert code != 0
    log = server.log()
    assert "two endpoints are marked as the health check" in log
    assert "embedded_app.health (GET /health)" in log
    assert "embedded_app.other_health (GET /ready)" in log


def test_E7_runwarden_run_serves_the_app_and_exits_12_on_a_503(serve) -> None:
    server = serve("run")
    server.wait_ready()
    assert httpx.get(f"{server.url}/work", timeout=5).status_code == 200
    httpx.get(f"{server.url}/work?status=503", timeout=5)
    assert server.wait_exit() == 12


def test_E5_a_server_that_runs_uvicorn_itself_exits_12_on_a_503(serve) -> None:
    """vLLM's serve_http: uvicorn.Server on the loop, the loop's own signal handlers."""
    server = serve("vllm")
    server.wait_ready()
    httpx.get(f"{server.url}/work?status=503", timeout=5)
    assert server.wait_exit() == 12
    assert "exiting with code 12 (app_503)" in server.log()


def _two_free_ports() -> int:
    """A port whose next one is free too (the second worker's admin port)."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


def test_E5_each_worker_has_its_runner_and_a_replacement_restarts_only_its_worker(
    serve,
) -> None:
    """uvicorn --workers 2: the first worker serves the admin port, the other the next one;
    a 503 replaces the worker that answered it, and uvicorn starts a fresh one."""
    admin = _two_free_ports()
    server = serve("uvicorn", "--workers", "2", RUNWARDEN_ADMIN_PORT=str(admin))
    ports = (admin, admin + 1)

    def pids() -> dict[int, int] | None:
        found = {}
        for port in ports:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code != 200:
                    return None
                status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=1).json()
            except httpx.TransportError:
                return None
            found[port] = status["app"]["pid"]
        return found

    before = poll(pids, 20)
    assert isinstance(before, dict) and len(set(before.values())) == 2
    assert httpx.get(f"{server.url}/work?status=503", timeout=5).status_code == 503
    after = poll(lambda: (p := pids()) and p != before and p, 30)
    assert isinstance(after, dict)
    assert len(set(after.values()) - set(before.values())) == 1, "one worker was replaced"
    assert server.proc.poll() is None, "the server itself keeps serving"
    assert "exiting with code 12 (app_503)" in server.log()


def test_D6_a_request_still_at_the_app_at_the_drain_deadline_gets_503_to_retry(serve) -> None:
    """D6, E4: the drain waits drain_timeout_seconds for the requests in flight; one still at
    the app then (its response not begun) is cancelled and answered 503 with Retry-After,
    never reset and never a 500."""
    server = serve(RUNWARDEN_DRAIN_TIMEOUT_SECONDS="1")
    server.wait_ready()
    slow, result = at_the_app(server, "/work?delay=10")
    started = time.monotonic()
    assert httpx.get(f"{server.url}/work?status=503", timeout=5).status_code == 503
    slow.join(10)
    answer = result["r"]
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-runwarden-draining"] == "app_503"
    assert time.monotonic() - started < 5
    assert server.wait_exit() == 12


def test_R4_an_app_that_raises_gets_one_extra_check_as_for_a_500(serve) -> None:
    """R2, R4: the server answers 500 for an app that raised; that asks one extra check
    (counted as the app's 500) and replaces nothing."""
    server = serve(RUNWARDEN_PERIOD_SECONDS="600")
    server.wait_ready()
    calls = server.state()["health_calls"]

    def crashed_and_checked() -> bool:
        # A crash within trigger_interval_seconds of the last check gets that one (R4).
        assert httpx.get(f"{server.url}/crash", timeout=5).status_code == 500
        return int(server.state()["health_calls"]) > int(calls)  # type: ignore[call-overload]

    poll(crashed_and_checked, 5)
    metrics = server.metrics()
    assert metrics['runwarden_proxied_requests_total{source="app",status="500"}'] >= 1
    assert server.proc.poll() is None


async def _app(scope: object, receive: object, send: object) -> None:
    return None


def test_E1_HealthCheck_has_the_seeds_defaults_keeps_what_it_was_given_and_names_a_bad_value() -> (
    None
):
    from runwarden import HealthCheck, HealthSettings, SettingsError

    check = HealthCheck(start_period_seconds=10)
    assert check.given == {"start_period_seconds": 10}
    assert (check.start_period_seconds, check.timeout_seconds) == (10, 5)
    assert (check.failure_threshold, check.call_regularly) == (3, True)
    for bad, setting in (({"failure_threshold": 0}, "failure_threshold"),
                         ({"timeout_seconds": -1}, "timeout_seconds"),
                         ({"no_such_setting": 1}, "no_such_setting")):  # fmt: skip
        with pytest.raises(SettingsError) as raised:
            HealthCheck(**bad)
        assert isinstance(raised.value, ValueError)
        assert raised.value.setting == setting
    assert HealthSettings is not HealthCheck  # the core's settings stay, under their name


def test_E2_Runwarden_refuses_a_bad_unknown_proxy_only_or_doubled_setting_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runwarden import HealthCheck
    from runwarden.asgi import Runwarden
    from runwarden.settings import ConfigError

    for name in [k for k in os.environ if k.startswith("RUNWARDEN_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="did you mean max_concurrency") as raised:
        Runwarden(_app, max_concurency=2)
    assert raised.value.setting == "max_concurency"
    with pytest.raises(ConfigError, match="proxy's") as raised:
        Runwarden(_app, max_app_connections=4)
    assert raised.value.setting == "max_app_connections"
    with pytest.raises(ConfigError, match="given twice"):
        Runwarden(_app, health_check=HealthCheck(timeout_seconds=2), timeout_seconds=3)
    with pytest.raises(ValueError, match="failure_threshold"):
        Runwarden(_app, failure_threshold=0)
    # Explicit > environment > default; the environment fills what a declaration leaves out.
    monkeypatch.setenv("RUNWARDEN_PERIOD_SECONDS", "7")
    monkeypatch.setenv("RUNWARDEN_TIMEOUT_SECONDS", "9")
    guarded = Runwarden(_app, health_check=HealthCheck(timeout_seconds=2))
    assert guarded.settings.timeout_seconds == 2
    assert guarded.settings.period_seconds == 7
    assert guarded.settings.sources["period_seconds"] == "environment"


def test_E2_Runwarden_is_an_asgi_3_app_to_a_server_that_asks() -> None:
    """E2: servers tell ASGI 3 from ASGI 2 by `app.__call__` (uvicorn, hypercorn): a
    coroutine function here, though the call itself is the core's (`AsgiEntry`, no Python
    frame per request); uvicorn's own detection, run on it, says asgi3."""
    import asyncio
    import inspect

    from runwarden.asgi import Runwarden
    from uvicorn.config import Config

    guarded = Runwarden(_app)
    assert inspect.iscoroutinefunction(guarded.__call__)
    assert asyncio.iscoroutinefunction(guarded.__call__)
    config = Config(guarded, lifespan="off")
    config.load()
    assert config.interface == "asgi3"


class _Handoff:
    """An awaitable that yields `token` to whoever drives the coroutine, and gives back what
    it is sent: the protocol a server's event loop speaks to the app through its `Ticket`."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __await__(self):  # type: ignore[no-untyped-def]
        return (yield self.token)


def test_E4_the_cores_call_of_the_app_steps_throws_and_closes_as_the_coroutine_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """E4/R4: a request the core admits is driven by its `Ticket`, not a Python frame; stepped
    by hand it passes on what the app yields, what it is sent, what it returns, an exception
    thrown in (and the app's own raise, judged as a 500), and a close."""
    import asyncio
    import gc

    from runwarden._core import Ticket
    from runwarden.asgi import Runwarden
    from runwarden.testing.lifespan import lifespan

    for name in [k for k in os.environ if k.startswith("RUNWARDEN_")]:
        monkeypatch.delenv(name)
    closed: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> object:  # type: ignore[type-arg]
        try:
            got = await _Handoff("first")
            if got == "raise":
                raise ValueError("the app's own")
            return f"returned {got}"
        finally:
            closed.append(scope["path"])

    admin = free_port()
    guarded = Runwarden(app, admin_host="127.0.0.1", admin_port=admin, gpu_monitoring=False)

    def request(path: str) -> dict:  # type: ignore[type-arg]
        return {"type": "http", "http_version": "1.1", "method": "GET", "path": path,
                "headers": [(b"host", b"x")], "client": ("127.0.0.1", 1)}  # fmt: skip

    async def nothing(message: object) -> None:
        return None

    async def scenario() -> None:
        async with lifespan(guarded):
            await steps_by_hand()

    async def steps_by_hand() -> None:
        call = guarded(request("/sent"), nothing, nothing)
        assert isinstance(call, Ticket)
        steps = call.__await__()
        assert next(steps) == "first"
        with pytest.raises(StopIteration) as stopped:
            steps.send("x")
        assert stopped.value.value == "returned x"

        steps = guarded(request("/thrown"), nothing, nothing).__await__()
        assert next(steps) == "first"
        with pytest.raises(KeyError):
            steps.throw(KeyError("thrown in"))

        steps = guarded(request("/raised"), nothing, nothing).__await__()
        next(steps)
        with pytest.raises(ValueError, match="the app's own"):
            steps.send("raise")

        steps = guarded(request("/closed"), nothing, nothing).__await__()
        next(steps)
        steps.close()
        assert closed == ["/sent", "/thrown", "/raised", "/closed"]

        # Dropped mid-call and never closed: the ticket and the app's coroutine hold each
        # other (the coroutine holds the ticket's send); the collector finds the cycle.
        steps = guarded(request("/dropped"), nothing, nothing).__await__()
        next(steps)
        del steps
        gc.collect()
        assert closed[-1] == "/dropped"
        # Each request has left the runner, the closed one too (its Ticket is held here).
        async with httpx.AsyncClient(timeout=5) as client:
            status = (await client.get(f"http://127.0.0.1:{admin}/status")).json()
        assert status["in_flight"] == 0, status

    asyncio.run(scenario())
