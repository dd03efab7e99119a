"""The README's fault-kit walkthrough, run exactly as printed (issue 17): the block is taken
from README.md and run by bash, in order, with its own loopback ports, a one-second NVML
watchdog and a fast sampler set through the environment, and a `my_server.py` that answers
health checks. It runs as a newcomer runs it (issue 24): straight after the quick start's
`pip install '.[demo]'`, in a fresh virtual environment of its own, away from the checkout."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent

MY_SERVER = """
import http.server, os, urllib.parse

port = urllib.parse.urlsplit(os.environ["RUNWARDEN_APP_URL"]).port


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Testing your runner's failure handling") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the README's fault-kit section"
    return block.group(1)


@pytest.mark.timeout(1800)
def test_the_readmes_fault_kit_walkthrough_runs_as_printed_after_the_quick_start(
    tmp_path: Path, quickstart: Path
) -> None:
    where = subprocess.run(
        [str(quickstart / "python"), "-c", "import runwarden; print(runwarden.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "site-packages" in where and not where.startswith(str(ROOT)), where
    script = walkthrough()
    assert script.count("inject-xid") == 1 and "lose-gpu" in script and "hang" in script
    (tmp_path / "my_server.py").write_text(MY_SERVER)
    env = clean_env(
        RUNWARDEN_HOST="127.0.0.1",
        RUNWARDEN_PORT=str(free_port()),
        RUNWARDEN_ADMIN_HOST="127.0.0.1",
        RUNWARDEN_ADMIN_PORT=str(free_port()),
        RUNWARDEN_APP_URL=f"http://127.0.0.1:{free_port()}",
        RUNWARDEN_NVML_WATCHDOG_SECONDS="1",
        RUNWARDEN_GPU_SAMPLE_SECONDS="0.2",
        RUNWARDEN_START_PERIOD_SECONDS="0",
        PATH=f"{quickstart}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(quickstart.parent),
    )
    # /tmp/gpus.json as printed, but this test's own: the block's paths, under tmp_path.
    script = script.replace("/tmp/gpus.json", str(tmp_path / "gpus.json"))
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.findall(r"^exit code (\d+)$", result.stdout, re.M) == ["13"] * 4, out
    assert "critical_xid on GPU 3" in out
    # Step 2's warning, as the comment promises: in runwarden's log and from /status.
    assert re.search(r" WARNING runwarden\S*: GPU warning temperature on GPU 0: ", out), out
    assert re.search(r"^GPU warning temperature on GPU 0: ", result.stdout, re.M), out
    assert "nvml_hung" in out or "did not return" in out, out
    assert "gpu_lost on GPU 1" in out, out
    assert "canary_mismatch on GPU 2" in out, out
