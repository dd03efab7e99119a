//! Reading one sample from one GPU through nvml-wrapper, every call under the watchdog.
//!
//! Per-process queries are left out on purpose: they cost milliseconds and hold the
//! driver's lock.

use std::os::raw::{c_uint, c_ulonglong};
use std::sync::Arc;

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};

use super::sample::{GpuSample, NvmlFailure, ReadError, RemappedRows, RetiredPages};
use super::watchdog::Watch;

const NVML_SUCCESS: u32 = 0;
const NVML_ERROR_INSUFFICIENT_SIZE: u32 = 7;

pub fn failure(error: &NvmlError) -> NvmlFailure {
    match error {
        NvmlError::GpuLost => NvmlFailure::GpuLost,
        NvmlError::ResetRequired => NvmlFailure::ResetRequired,
        other => NvmlFailure::Other(other.to_string()),
    }
}

fn failure_of_code(code: u32) -> NvmlFailure {
    match code {
        15 => NvmlFailure::GpuLost,
        16 => NvmlFailure::ResetRequired,
        other => NvmlFailure::Other(format!("NVML error {other}")),
    }
}

/// Collects readings; a reading the GPU does not support is simply absent.
struct Reader<'a> {
    watch: &'a Watch,
    errors: Vec<ReadError>,
}

impl<'a> Reader<'a> {
    fn new(watch: &'a Watch) -> Self {
        Reader {
            watch,
            errors: Vec::new(),
        }
    }

    fn read<T>(
        &mut self,
        call: &'static str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Option<T> {
        match self.watch.call(call, f) {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(call, &error);
                None
            }
        }
    }

    /// Out of line, so that the code a sample runs stays small: after the sampler's sleep
    /// every cache line of it is a miss.
    #[cold]
    #[inline(never)]
    fn fail(&mut self, call: &'static str, error: &NvmlError) {
        if !matches!(error, NvmlError::NotSupported) {
            self.errors.push(ReadError {
                call,
                error: failure(error),
            });
        }
    }

    /// A raw call nvml-wrapper does not wrap (or wraps at twice the cost).
    fn read_raw(&mut self, call: &'static str, code: u32) -> bool {
        match code {
            NVML_SUCCESS | NVML_ERROR_INSUFFICIENT_SIZE => true,
            3 => false, // NVML_ERROR_NOT_SUPPORTED
            code => {
                self.errors.push(ReadError {
                    call,
                    error: failure_of_code(code),
                });
                false
            }
        }
    }
}

const HANDLE_CALL: &str = "nvmlDeviceGetHandleByIndex_v2";

/// One GPU as the sampler keeps it between samples. UUID and name never change, so they are
/// read once; the handle is kept too (NVML's handles stay valid while it is initialised),
/// which spares every sample a lookup per GPU.
pub struct Gpu<'nvml> {
    index: u32,
    uuid: Option<Arc<str>>,
    name: Option<Arc<str>>,
    pci_bus_id: Option<Arc<str>>,
    device: Option<Device<'nvml>>,
}

impl<'nvml> Gpu<'nvml> {
    /// Look GPU `index` up and read what never changes.
    pub fn find(nvml: &'nvml Nvml, index: u32, watch: &Watch) -> Self {
        let mut reader = Reader::new(watch);
        let device = reader.read(HANDLE_CALL, || nvml.device_by_index(index));
        let mut read_str = |call, f: fn(&Device<'nvml>) -> Result<String, NvmlError>| {
            let device = device.as_ref()?;
            reader.read(call, || f(device)).map(Arc::from)
        };
        let uuid = read_str("nvmlDeviceGetUUID", Device::uuid);
        let name = read_str("nvmlDeviceGetName", Device::name);
        let pci_bus_id = read_str("nvmlDeviceGetPciInfo_v3", |d| {
            d.pci_info().map(|p| p.bus_id)
        });
        Gpu {
            index,
            uuid,
            name,
            pci_bus_id,
            device,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn uuid(&self) -> Option<&str> {
        self.uuid.as_deref()
    }

    /// One sample, through the kept handle. If any call fails, the sample is read again
    /// from a fresh lookup, exactly as without a kept handle: a lost GPU fails the lookup,
    /// and is reported by that one call, not by every call the handle failed.
    pub fn read(&mut self, nvml: &'nvml Nvml, watch: &Watch) -> GpuSample {
        if let Some(device) = &self.device {
            let sample = self.read_with(nvml, device, Reader::new(watch));
            if sample.errors.is_empty() {
                return sample;
            }
        }
        let mut reader = Reader::new(watch);
        let index = self.index;
        self.device = reader.read(HANDLE_CALL, || nvml.device_by_index(index));
        match &self.device {
            Some(device) => self.read_with(nvml, device, reader),
            None => GpuSample {
                errors: reader.errors,
                ..self.blank()
            },
        }
    }

    fn blank(&self) -> GpuSample {
        GpuSample {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            pci_bus_id: self.pci_bus_id.clone(),
            ..Default::default()
        }
    }

    fn read_with(&self, nvml: &Nvml, device: &Device<'_>, mut reader: Reader<'_>) -> GpuSample {
        let mut sample = self.blank();
        let r = &mut reader;
        sample.temperature_c = r.read("nvmlDeviceGetTemperature", || {
            device.temperature(TemperatureSensor::Gpu)
        });
        sample.memory_temperature_c = memory_temperature(device, r);
        sample.sm_clock_mhz = r.read("nvmlDeviceGetClockInfo", || device.clock_info(Clock::SM));
        sample.memory_clock_mhz = r.read("nvmlDeviceGetClockInfo", || {
            device.clock_info(Clock::Memory)
        });
        sample.throttle_reasons = r
            .read("nvmlDeviceGetCurrentClocksThrottleReasons", || {
                device.current_throttle_reasons()
            })
            .map(|reasons| reasons.bits());
        sample.power_mw = r.read("nvmlDeviceGetPowerUsage", || device.power_usage());
        if let Some(util) = r.read("nvmlDeviceGetUtilizationRates", || {
            device.utilization_rates()
        }) {
            sample.gpu_utilization = Some(util.gpu);
            sample.memory_utilization = Some(util.memory);
        }
        if let Some(memory) = r.read("nvmlDeviceGetMemoryInfo_v2", || device.memory_info()) {
            sample.memory_used_bytes = Some(memory.used);
            sample.memory_total_bytes = Some(memory.total);
        }
        sample.energy_mj = r.read("nvmlDeviceGetTotalEnergyConsumption", || {
            device.total_energy_consumption()
        });
        sample.pcie_replays = r.read("nvmlDeviceGetPcieReplayCounter", || {
            device.pcie_replay_counter()
        });
        let ecc = |r: &mut Reader<'_>, error: MemoryError, counter: EccCounter| {
            r.read("nvmlDeviceGetTotalEccErrors", || {
                device.total_ecc_errors(error, counter)
            })
        };
        sample.ecc.volatile_corrected = ecc(r, MemoryError::Corrected, EccCounter::Volatile);
        sample.ecc.volatile_uncorrected = ecc(r, MemoryError::Uncorrected, EccCounter::Volatile);
        sample.ecc.aggregate_corrected = ecc(r, MemoryError::Corrected, EccCounter::Aggregate);
        sample.ecc.aggregate_uncorrected = ecc(r, MemoryError::Uncorrected, EccCounter::Aggregate);
        sample.retired_pages = retired_pages(nvml, device, r);
        sample.remapped_rows = remapped_rows(nvml, device, r);
        sample.errors = reader.errors;
        sample
    }
}

/// `NVML_FI_DEV_MEMORY_TEMP`, dcgm-exporter's `DCGM_FI_DEV_MEMORY_TEMP`; HBM GPUs report it.
const FI_DEV_MEMORY_TEMP: u32 = 82;

/// The memory's temperature, through `nvmlDeviceGetFieldValues` (no other call reads it).
fn memory_temperature(device: &Device<'_>, r: &mut Reader<'_>) -> Option<u32> {
    let values = r.read("nvmlDeviceGetFieldValues", || {
        device.field_values_for(&[FieldId(FI_DEV_MEMORY_TEMP)])
    })?;
    match values.into_iter().next()?.ok()?.value.ok()? {
        SampleValue::U32(t) => Some(t),
        SampleValue::U64(t) => u32::try_from(t).ok(),
        SampleValue::I64(t) => u32::try_from(t).ok(),
        _ => None,
    }
}

/// Counts only: one raw call per cause instead of nvml-wrapper's two (count, then list).
fn retired_pages(nvml: &Nvml, device: &Device<'_>, r: &mut Reader<'_>) -> Option<RetiredPages> {
    let count_sym = nvml.lib().nvmlDeviceGetRetiredPages.as_ref().ok()?;
    let mut counts = [0u64; 2];
    let causes = [
        RetirementCause::MultipleSingleBitEccErrors,
        RetirementCause::DoubleBitEccError,
    ];
    for (slot, cause) in counts.iter_mut().zip(causes) {
        let mut count: c_uint = 0;
        let mut address: c_ulonglong = 0;
        // SAFETY: a count query; with *count == 0 NVML writes no address, and the handle
        // comes from a live `Device`.
        let code = r.watch.call("nvmlDeviceGetRetiredPages", || unsafe {
            count_sym(device.handle(), cause.as_c(), &mut count, &mut address)
        });
        if !r.read_raw("nvmlDeviceGetRetiredPages", code) {
            return None;
        }
        *slot = u64::from(count);
    }
    let pending = r.read("nvmlDeviceGetRetiredPagesPendingStatus", || {
        device.are_pages_pending_retired()
    })?;
    Some(RetiredPages {
        single_bit: counts[0],
        double_bit: counts[1],
        pending,
    })
}

/// Remapped rows (Ampere and newer); nvml-wrapper does not wrap this call.
fn remapped_rows(nvml: &Nvml, device: &Device<'_>, r: &mut Reader<'_>) -> Option<RemappedRows> {
    let sym = nvml.lib().nvmlDeviceGetRemappedRows.as_ref().ok()?;
    let (mut corr, mut unc, mut pending, mut failure): (c_uint, c_uint, c_uint, c_uint) =
        (0, 0, 0, 0);
    // SAFETY: four out-pointers to locals and a handle from a live `Device`.
    let code = r.watch.call("nvmlDeviceGetRemappedRows", || unsafe {
        sym(
            device.handle(),
            &mut corr,
            &mut unc,
            &mut pending,
            &mut failure,
        )
    });
    r.read_raw("nvmlDeviceGetRemappedRows", code)
        .then_some(RemappedRows {
            correctable: u64::from(corr),
            uncorrectable: u64::from(unc),
            pending: pending != 0,
            failure: failure != 0,
        })
}
