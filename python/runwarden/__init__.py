"""runwarden: a health sidecar for GPU inference runners.

The Rust core (`runwarden._core`) runs the health-check scheduler, GPU monitoring and the
data plane (both ports) on its own threads; `Warden` is its asyncio face. Two fronts are
built on it: the proxy (`runwarden serve`), and inside a Python model server the ASGI
middleware `runwarden.asgi.Runwarden` with the health check declared in code
(`HealthCheck`, `@health_check`).
"""

from runwarden._core import (
    CheckOutcome,
    Core,
    GpuFinding,
    GpuMonitoring,
    GpuSamples,
    GpuSettings,
    HealthSettings,
    ProxySettings,
    SettingsError,
    Verdict,
    __version__,
)
from runwarden.declaration import HealthCheck, health_check
from runwarden.warden import Warden

__all__ = [
    "CheckOutcome",
    "Core",
    "GpuFinding",
    "GpuMonitoring",
    "GpuSamples",
    "GpuSettings",
    "HealthCheck",
    "HealthSettings",
    "ProxySettings",
    "SettingsError",
    "Verdict",
    "Warden",
    "__version__",
    "health_check",
]
