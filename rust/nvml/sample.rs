//! One GPU's readings (SPEC G1), as plain data the policy judges and Python exports.

use std::sync::Arc;

/// ECC error counts; `None` where the GPU does not support ECC or the call failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EccCounts {
    pub volatile_corrected: Option<u64>,
    pub volatile_uncorrected: Option<u64>,
    pub aggregate_corrected: Option<u64>,
    pub aggregate_uncorrected: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetiredPages {
    pub single_bit: u64,
    pub double_bit: u64,
    pub pending: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemappedRows {
    pub correctable: u64,
    pub uncorrectable: u64,
    pub pending: bool,
    pub failure: bool,
}

/// A reading that could not be taken, with NVML's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub call: &'static str,
    pub error: NvmlFailure,
}

/// The NVML failures the policy tells apart; everything else is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlFailure {
    GpuLost,
    ResetRequired,
    Other(String),
}

impl std::fmt::Display for NvmlFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NvmlFailure::GpuLost => write!(f, "GPU is lost"),
            NvmlFailure::ResetRequired => write!(f, "GPU requires reset"),
            NvmlFailure::Other(text) => write!(f, "{text}"),
        }
    }
}

/// Everything one sample reads from one GPU. Unsupported readings are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    /// Shared with the sampler's own copy: a sample clones no strings.
    pub uuid: Option<Arc<str>>,
    pub name: Option<Arc<str>>,
    /// "00000000:18:00.0": dcgm-exporter's `pci_bus_id` label.
    pub pci_bus_id: Option<Arc<str>>,
    pub temperature_c: Option<u32>,
    pub memory_temperature_c: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    pub throttle_reasons: Option<u64>,
    pub power_mw: Option<u32>,
    pub gpu_utilization: Option<u32>,
    pub memory_utilization: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Millijoules since the driver loaded.
    pub energy_mj: Option<u64>,
    pub pcie_replays: Option<u32>,
    pub ecc: EccCounts,
    pub retired_pages: Option<RetiredPages>,
    pub remapped_rows: Option<RemappedRows>,
    pub errors: Vec<ReadError>,
}

/// Throttle-reason bits (nvml.h `nvmlClocksThrottleReason*`) the policy warns about.
pub mod throttle {
    pub const HW_SLOWDOWN: u64 = 0x8;
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
    pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
}
