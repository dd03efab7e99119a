"""Model-server profiles (`--app-profile`): the health settings each known server needs, from
its own documentation (docs/profiles.md cites it). A profile fills only settings given
neither on the command line nor in the environment: an explicit option always wins, and
`/status`'s `setting_sources` says where each value came from."""

from __future__ import annotations

from collections.abc import Mapping

PROFILES: Mapping[str, Mapping[str, object]] = {
    # Nothing known about the app: the defaults of SPEC H.
    "generic": {},
    # vLLM's OpenAI-compatible server: GET /health answers 200 while the engine runs, and an
    # error once the engine is dead. It does not run the model: not a thorough check.
    "vllm": {"health_path": "/health", "health_method": "GET"},
    # SGLang: GET /health_generate runs a one-token generation through the model, a thorough
    # check: it runs alone, between requests (Q1).
    "sglang": {"health_path": "/health_generate", "health_method": "GET", "exclusive_checks": True},
    # Text Generation Inference: GET /health answers 200 when the model's shards are healthy
    # (the router checks them, with a small generation when none ran lately), 503 if not.
    "tgi": {"health_path": "/health", "health_method": "GET"},
    # Triton Inference Server (KServe v2 protocol): GET /v2/health/ready answers 200 when
    # the server and its models are ready, 400 when not.
    "triton": {"health_path": "/v2/health/ready", "health_method": "GET"},
}

NAMES: tuple[str, ...] = tuple(PROFILES)
