# syntax=docker/dockerfile:1.7
# runwarden in vLLM's OpenAI-compatible server image: runwarden is the ENTRYPOINT and supervises
# vLLM (entrypoint mode), with the vllm profile (health path /health) and the door sized to
# vLLM's own scheduler (--max-num-seqs). The image carries its own CUDA and Python; runwarden
# needs neither a compiler nor CUDA, only the abi3 wheel `make wheel` builds (any Python >= 3.10,
# glibc >= 2.17).
#
# From the repository root, after `make wheel` (the wheel lands in dist/):
#   docker build -f deploy/images/vllm.Dockerfile -t my-vllm-runner .
#   docker run --gpus all --stop-timeout 40 -p 8080:8080 -p 8081:8081 my-vllm-runner
FROM vllm/vllm-openai:v0.11.0

# The wheel only: vLLM's image already has everything it imports but python-json-logger,
# which pip resolves from the wheel's metadata.
RUN --mount=type=bind,source=dist,target=/dist \
    pip install --no-cache-dir /dist/runwarden-*-abi3-*.whl

# runwarden's settings (see `runwarden serve --help`); the command line after -- is vLLM's.
# The start period covers a model's download and load (H1: the startup timeout raises it).
ENV RUNWARDEN_APP_PROFILE=vllm \
    RUNWARDEN_APP_URL=http://127.0.0.1:8000 \
    RUNWARDEN_MAX_CONCURRENCY=256 \
    RUNWARDEN_STARTUP_TIMEOUT_SECONDS=1200 \
    RUNWARDEN_LOG_FORMAT=json

# 8080: the proxy (send traffic here); 8081: the admin port. vLLM's own 8000 stays inside.
EXPOSE 8080 8081

# For plain `docker run` and Compose: healthy once the model passed a check, unhealthy while
# draining. (Kubernetes uses its own probes: deploy/kubernetes/.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=1200s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]

ENTRYPOINT ["runwarden", "serve", "--", "python3", "-m", "vllm.entrypoints.openai.api_server"]
# --max-num-seqs matches RUNWARDEN_MAX_CONCURRENCY: requests beyond it wait at runwarden,
# where an autoscaler sees them, not inside vLLM, where a health check would wait behind them.
CMD ["--model", "Qwen/Qwen2.5-1.5B-Instruct", "--host", "127.0.0.1", "--port", "8000", "--max-num-seqs", "256"]
