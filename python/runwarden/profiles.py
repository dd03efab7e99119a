"""Model-server profiles (`--app-profile`): the health settings each known server needs, from
its own documentation (docs/profiles.md cites it). A profile fills only settings given
neither on the command line nor in the environment: an explicit option always wins, and
`/status`'s `setting_sources` says where each value came from."""

from __future__ import annotations

from collections.abc import Mapping

MODEL_LOAD_SECONDS = 1200.0
"""A model server's start-up budget (`startup_timeout_seconds`, H1: the start period is raised
to it): a large model read from network storage loads for 5 to 20 minutes, during which its
health route refuses connections or answers an error. The generic defaults (a 30 s start
period, then 3 checks 15 s apart) would replace it at about 60 s, before it ever served. A
runner whose app passes its first check early is ready then: the budget only forgives
failures before that (deploy/images/vllm.Dockerfile sets the same)."""

PROFILES: Mapping[str, Mapping[str, object]] = {
    # Nothing known about the app: the defaults of SPEC H.
    "generic": {},
    # vLLM's OpenAI-compatible server: GET /health answers 200 while the engine runs, and an
    # error once the engine is dead. It does not run the model: not a thorough check.
    "vllm": {
        "health_path": "/health",
        "health_method": "GET",
        "startup_timeout_seconds": MODEL_LOAD_SECONDS,
    },
    # SGLang: GET /health_generate runs a one-token generation through the model, a thorough
    # check: it runs alone, between requests (Q1).
    "sglang": {
        "health_path": "/health_generate",
        "health_method": "GET",
        "exclusive_checks": True,
        "startup_timeout_seconds": MODEL_LOAD_SECONDS,
    },
    # Text Generation Inference: GET /health answers 200 when the model's shards are healthy
    # (the router checks them, with a small generation when none ran lately), 503 if not.
    "tgi": {
        "health_path": "/health",
        "health_method": "GET",
        "startup_timeout_seconds": MODEL_LOAD_SECONDS,
    },
    # Triton Inference Server (KServe v2 protocol): GET /v2/health/ready answers 200 when
    # the server and its models are ready, 400 when not.
    "triton": {
        "health_path": "/v2/health/ready",
        "health_method": "GET",
        "startup_timeout_seconds": MODEL_LOAD_SECONDS,
    },
}

NAMES: tuple[str, ...] = tuple(PROFILES)
