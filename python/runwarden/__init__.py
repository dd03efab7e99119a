"""runwarden: a health sidecar for GPU inference runners.

The Rust core (`runwarden._core`) runs the health-check scheduler, GPU monitoring and the
data plane (both ports) on its own threads; `Warden` is its asyncio face, and the sidecar
(`runwarden serve`) is built on it.
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
from runwarden.warden import Warden

__all__ = [
    "CheckOutcome",
    "Core",
    "GpuFinding",
    "GpuMonitoring",
    "GpuSamples",
    "GpuSettings",
    "HealthSettings",
    "ProxySettings",
    "SettingsError",
    "Verdict",
    "Warden",
    "__version__",
]
