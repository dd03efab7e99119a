"""A healthy app that sheds load itself is never replaced by load alone (issue 22, item 4).

uvicorn's `--limit-concurrency L` answers 503 once L connections are open or L requests
are running (under uvloop, a request just finished still counts until the loop's next
turn), and runwarden replaces a runner whose app answers 503 (SPEC R1). runwarden reads
that limit off the app's command and keeps its door (SPEC Q) at (L - 1) // 2: D running, D
just finished and a check stay under L. Black box: `runwarden serve -- python -m uvicorn …
--limit-concurrency 5`, a burst of 40 requests, checks every 0.2 s.
"""

from __future__ import annotations

import asyncio
import sys

import httpx
from conftest import free_port, poll


def _uvicorn(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app_server:app", "--app-dir", "tests",
            "--port", str(port), "--log-level", "warning", *extra]  # fmt: skip


def _burst(url: str, count: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            calls = (client.get(f"{url}/predict", params={"latency": "0.3"}) for _ in range(count))
            return await asyncio.gather(*calls)

    return asyncio.run(run())


def test_Q4_uvicorn_limit_concurrency_sets_the_door_and_a_burst_replaces_nothing(runwarden):
    """Issue 22, item 4: with `--limit-concurrency 5` in the app's command and no
    `--max-concurrency`, the door is 2 (said in the log and /status); a burst of 40 is all
    answered by the app (200), every check once the app listens passes, and the runner
    stays (before: exit 12, or 10 with a door of 3; with a door of L - 2 about one run in
    twenty had a check refused, uvicorn counting 2 running and 2 just-finished requests)."""
    port = free_port()
    rw = runwarden(
        f"http://127.0.0.1:{port}", "--max-queue", "64",
        app_command=_uvicorn(port, "--limit-concurrency", "5"), wait_ready=True,
    )  # fmt: skip
    responses = _burst(rw.url, 40)
    assert [r.status_code for r in responses] == [200] * 40

    # Two more checks after the burst (every 0.2 s): the runner stays.
    def last_check() -> int:
        return max((check["id"] for check in rw.status()["checks"]), default=0)

    after = last_check()
    poll(lambda: rw.proc.poll() is not None or last_check() >= after + 2)
    assert rw.proc.poll() is None, rw.log()
    status = rw.status()
    assert status["door"]["max_concurrency"] == 2
    assert status["setting_sources"]["max_concurrency"] == (
        "app command (uvicorn --limit-concurrency 5)"
    )
    # The checks before the app listened were refused by the kernel, not by uvicorn.
    checks = status["checks"]
    answered = [c for c in checks if c["error"] != "connection refused"]
    assert len(answered) >= 2, checks
    assert [c for c in answered if not c["passed"]] == [], checks
    assert "--max-concurrency set to 2: the app's uvicorn --limit-concurrency 5" in rw.log()


def test_Q4_a_door_wider_than_the_apps_own_limit_is_warned_of(runwarden):
    """Issue 22, item 4: `--max-concurrency 3` given beside `--limit-concurrency 4` is kept
    (the operator said so) and warned of at start, naming the value that fits."""
    port = free_port()
    rw = runwarden(
        f"http://127.0.0.1:{port}", "--max-concurrency", "3",
        app_command=_uvicorn(port, "--limit-concurrency=4"), wait_ready=True,
    )  # fmt: skip
    assert rw.status()["door"]["max_concurrency"] == 3
    assert (
        "--max-concurrency 3 lets more requests reach the app than its uvicorn "
        "--limit-concurrency 4 takes" in rw.log()
    )
    assert "set --max-concurrency 1 or less" in rw.log()
