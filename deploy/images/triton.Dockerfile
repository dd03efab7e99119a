# syntax=docker/dockerfile:1.7
# runwarden in NVIDIA's Triton Inference Server image: runwarden is the ENTRYPOINT and
# supervises tritonserver (entrypoint mode), with the triton profile (readiness at
# /v2/health/ready). Triton keeps its own scheduler and queue policy, so the door sets no
# concurrency limit here (README: "Which --max-concurrency fits which server"). runwarden needs
# neither a compiler nor CUDA, only the abi3 wheel `make wheel` builds.
#
# From the repository root, after `make wheel` (the wheel lands in dist/), with a model
# repository mounted at /models:
#   docker build -f deploy/images/triton.Dockerfile -t my-triton-runner .
#   docker run --gpus all --stop-timeout 40 -p 8080:8080 -p 8081:8081 \
#       -v "$PWD/models:/models" my-triton-runner
FROM nvcr.io/nvidia/tritonserver:25.01-py3

# Triton's Python is the distribution's (PEP 668, externally managed): runwarden goes into a
# virtual environment of its own, off Triton's path.
RUN --mount=type=bind,source=dist,target=/dist \
    python3 -m venv /opt/runwarden \
    && /opt/runwarden/bin/pip install --no-cache-dir /dist/runwarden-*-abi3-*.whl

ENV PATH=/opt/runwarden/bin:$PATH \
    RUNWARDEN_APP_PROFILE=triton \
    RUNWARDEN_APP_URL=http://127.0.0.1:8000 \
    RUNWARDEN_STARTUP_TIMEOUT_SECONDS=600 \
    RUNWARDEN_LOG_FORMAT=json

# 8080: the proxy (HTTP/REST); 8081: the admin port. Triton's own ports stay inside.
EXPOSE 8080 8081

# For plain `docker run` and Compose: healthy once Triton passed a check, unhealthy while
# draining. (Kubernetes uses its own probes: deploy/kubernetes/.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]

ENTRYPOINT ["runwarden", "serve", "--", "tritonserver"]
CMD ["--model-repository=/models", "--http-address=127.0.0.1", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
