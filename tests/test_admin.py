"""The admin port (SPEC A, H8)."""

from __future__ import annotations

import socket
import time

import httpx
from conftest import AppServer, parse_metrics, poll


def test_A_readyz_waits_for_the_first_passing_check(app_server: AppServer, runwarden):
    """A: /readyz is 503 until the app's first check passes, then 200; /livez is 200."""
    app_server.set_health("fail500")
    rw = runwarden(app_server.url)
    assert httpx.get(f"{rw.admin_url}/readyz").status_code == 503
    assert httpx.get(f"{rw.admin_url}/livez").status_code == 200
    assert rw.status()["state"] == "starting"
    app_server.set_health("pass")
    rw.wait_ready()
    assert rw.status()["state"] == "ready"


def test_A_H8_status_json(app_server: AppServer, runwarden):
    """A/H8: /status shows state, reason, uptime, settings, check history and a GPU section."""
    missing = "/nonexistent/libnvidia-ml.so.1"
    rw = runwarden(
        app_server.url, "--failure-threshold", "4", "--nvml-library", missing, wait_ready=True
    )
    status = rw.status()
    assert status["state"] == "ready" and status["reason"] is None
    assert float(status["uptime_seconds"]) > 0  # type: ignore[arg-type]
    settings = status["settings"]
    assert settings["failure_threshold"] == 4  # type: ignore[index]
    assert settings["period_seconds"] == 0.2  # type: ignore[index]
    assert settings["admin_host"] == "127.0.0.1"  # type: ignore[index]
    assert settings["app_url"] == app_server.url  # type: ignore[index]
    checks = status["checks"]
    assert checks and checks[-1]["passed"] is True  # type: ignore[index]
    assert {"status", "latency_seconds", "counted"} <= set(checks[-1])  # type: ignore[index]
    # No NVML library: monitoring is off, /status says why, and everything else works (G).
    gpu = status["gpu"]
    assert isinstance(gpu, dict) and gpu["enabled"] is False
    assert str(gpu["detail"]).startswith(
        f"GPU monitoring is off: could not load NVML from {missing}"
    )
    assert "GPU monitoring is off" in rw.log(), "said once in the log"


def test_A_H8_metrics_prometheus_text(app_server: AppServer, runwarden):
    """A/H8: /metrics in Prometheus text format: checks by outcome, check latency,
    proxied requests by status, in-flight and drain state."""
    rw = runwarden(app_server.url, wait_ready=True)
    httpx.get(f"{rw.url}/predict", params={"status": "404"})
    response = httpx.get(f"{rw.admin_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = parse_metrics(response.text)
    assert metrics['runwarden_checks_total{counted="pass",outcome="pass"}'] >= 1
    assert 'runwarden_check_duration_seconds_bucket{le="0.1"}' in metrics
    assert metrics['runwarden_proxied_requests_total{source="app",status="404"}'] == 1
    assert metrics["runwarden_requests_in_flight"] == 0
    assert metrics["runwarden_draining"] == 0
    assert metrics['runwarden_state{state="ready"}'] == 1


def test_A_admin_routes_are_not_reachable_through_the_proxy(app_server: AppServer, runwarden):
    """A: the proxy port forwards /status, /metrics... to the app; it never serves them."""
    rw = runwarden(app_server.url, wait_ready=True)
    for path in ("/livez", "/readyz", "/status", "/metrics"):
        response = httpx.get(f"{rw.url}{path}")
        assert response.status_code == 404  # the test app's answer
        assert "runwarden" not in response.text
    assert app_server.state()["received"] == 0  # 404s of routes that do not count


def test_A_livez_fails_once_replacing(app_server: AppServer, runwarden):
    """A: /livez is 200 until replacement."""
    rw = runwarden(
        app_server.url, "--no-call-regularly", "--failure-threshold", "1",
        "--drain-timeout-seconds", "5", wait_ready=True,
    )  # fmt: skip
    assert httpx.get(f"{rw.admin_url}/livez").status_code == 200
    with httpx.Client(base_url=rw.url, timeout=10) as client:
        with client.stream("GET", "/sse", params={"events": "20", "interval": "0.1"}):
            client.get("/predict", params={"status": "503"})
            poll(lambda: httpx.get(f"{rw.admin_url}/livez").status_code == 503)
            assert "app_503" in httpx.get(f"{rw.admin_url}/livez").text


def test_A_S6_an_admin_keep_alive_connection_outlives_the_header_timeout(
    app_server: AppServer, runwarden
):
    """A/S6: a scraper's keep-alive connection to the admin port is timed as the proxy
    port's are: once its requests are answered it is idle (keep_alive_seconds), not a head
    that never finished (header_timeout_seconds), so the next scrape on it is answered."""
    rw = runwarden(app_server.url, "--header-timeout-seconds", "1", wait_ready=True)
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", rw.admin_port), timeout=5) as sock:
        sock.sendall(request)
        first = sock.recv(65536)
        # Idle past the header timeout (and its sweep); one connection throughout.
        time.sleep(2.0)
        sock.sendall(request)
        second = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert second.startswith(b"HTTP/1.1 200"), f"the connection was closed: {second!r}"
