//! The per-GPU queries: device count and handles, identity, and every value the sampler
//! reads. Signatures and struct layouts follow `nvml.h`.

use std::ffi::{c_char, c_uint, c_ulonglong, CStr};

use crate::codes::{
    Ret, ERROR_ARGUMENT_VERSION_MISMATCH, ERROR_INSUFFICIENT_SIZE, ERROR_INVALID_ARGUMENT,
    ERROR_NOT_FOUND, ERROR_NOT_SUPPORTED,
};
use crate::guard::{check_gpu, enter, enter_device, handle, mig_handle, mig_parent_of, Device};
use crate::state::{Gpu, State};
use crate::{answer, put, put_str};

/// `nvmlMemory_t`.
#[repr(C)]
pub struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2`: `NVML_STRUCT_VERSION(Memory, 2)`, the struct's size with the version
/// number in the top byte (0x02000028). Callers must set it; the real driver checks it.
const MEMORY_V2: c_uint = std::mem::size_of::<MemoryV2>() as c_uint | (2 << 24);

/// `nvmlUtilization_t`.
#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlPciInfo_t` (the v3 layout).
#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// Answers a call about one device: the checks of [`enter_device`], then `body`.
fn with_gpu(
    name: &str,
    device: Device,
    body: impl FnOnce(&Gpu, usize, &State) -> Result<(), Ret>,
) -> Ret {
    answer(enter_device(name, device).and_then(|(state, i)| body(&state.gpus[i], i, &state)))
}

// ---- count and handles ----

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    answer(enter("nvmlDeviceGetCount_v2", None).and_then(|s| put(count, s.gpus.len() as c_uint)))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    answer(enter("nvmlDeviceGetCount", None).and_then(|s| put(count, s.gpus.len() as c_uint)))
}

unsafe fn handle_by_index(name: &str, index: c_uint, device: *mut Device) -> Ret {
    let index = index as usize;
    answer(enter(name, Some(index)).and_then(|state| {
        if index >= state.gpus.len() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        check_gpu(&state, name, index)?;
        put(device, handle(index))
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut Device) -> Ret {
    handle_by_index("nvmlDeviceGetHandleByIndex_v2", index, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut Device) -> Ret {
    handle_by_index("nvmlDeviceGetHandleByIndex", index, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut Device,
) -> Ret {
    let name = "nvmlDeviceGetHandleByUUID";
    answer(enter(name, None).and_then(|state| {
        if uuid.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let wanted = CStr::from_ptr(uuid).to_bytes();
        if let Some(parent) = (0..state.gpus.len()).find(|&i| {
            state.gpus[i]
                .mig_uuids
                .iter()
                .any(|m| m.as_bytes() == wanted)
        }) {
            check_gpu(&state, name, parent)?;
            return put(device, mig_handle(parent));
        }
        let index = (0..state.gpus.len())
            .find(|&i| state.gpus[i].uuid(i).as_bytes() == wanted)
            .ok_or(ERROR_NOT_FOUND)?;
        check_gpu(&state, name, index)?;
        put(device, handle(index))
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: Device,
    device: *mut Device,
) -> Ret {
    let name = "nvmlDeviceGetDeviceHandleFromMigDeviceHandle";
    answer(enter(name, None).and_then(|state| {
        let parent = mig_parent_of(mig).ok_or(ERROR_INVALID_ARGUMENT)?;
        if parent >= state.gpus.len() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        check_gpu(&state, name, parent)?;
        put(device, handle(parent))
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(device: Device, is_mig: *mut c_uint) -> Ret {
    answer(
        enter("nvmlDeviceIsMigDeviceHandle", None)
            .and_then(|_| put(is_mig, c_uint::from(mig_parent_of(device).is_some()))),
    )
}

// ---- identity ----

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: Device, index: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetIndex", device, |_, i, _| {
        put(index, i as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: Device,
    name: *mut c_char,
    length: c_uint,
) -> Ret {
    with_gpu("nvmlDeviceGetName", device, |gpu, _, _| {
        put_str(name, length, &gpu.name)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Device,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    with_gpu("nvmlDeviceGetUUID", device, |gpu, i, _| {
        put_str(uuid, length, &gpu.uuid(i))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: Device, pci: *mut PciInfo) -> Ret {
    with_gpu("nvmlDeviceGetPciInfo_v3", device, |gpu, i, _| {
        let bus_id = gpu.pci_bus_id(i);
        // "DDDDDDDD:BB:DD.F", hex; the numeric fields agree with the string.
        let field = |n: usize| {
            let mut parts = bus_id.split([':', '.']);
            parts
                .nth(n)
                .and_then(|p| c_uint::from_str_radix(p, 16).ok())
                .unwrap_or(0)
        };
        let mut info = PciInfo {
            bus_id_legacy: [0; 16],
            domain: field(0),
            bus: field(1),
            device: field(2),
            pci_device_id: 0x2330_10DE, // H100 SXM5: device id in the high half, NVIDIA's vendor id low
            pci_sub_system_id: 0x16C1_10DE,
            bus_id: [0; 32],
        };
        // The legacy field holds the short "0000:18:00.0" form; cut to fit, never fail.
        let legacy = bus_id.get(4..).unwrap_or(&bus_id);
        put_str(
            info.bus_id_legacy.as_mut_ptr(),
            16,
            legacy.get(..15).unwrap_or(legacy),
        )?;
        put_str(info.bus_id.as_mut_ptr(), 32, &bus_id)?;
        put(pci, info)
    })
}

// ---- sampled values ----

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: Device,
    sensor: c_uint,
    temp: *mut c_uint,
) -> Ret {
    with_gpu(
        "nvmlDeviceGetTemperature",
        device,
        |gpu, _, _| match sensor {
            0 => put(temp, gpu.temperature), // NVML_TEMPERATURE_GPU, the only sensor there is
            _ => Err(ERROR_INVALID_ARGUMENT),
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: Device,
    kind: c_uint,
    clock: *mut c_uint,
) -> Ret {
    with_gpu("nvmlDeviceGetClockInfo", device, |gpu, _, _| {
        let mhz = match kind {
            0 => gpu.graphics_clock(), // NVML_CLOCK_GRAPHICS
            1 => gpu.sm_clock,
            2 => gpu.mem_clock,
            3 => gpu.video_clock,
            _ => return Err(ERROR_INVALID_ARGUMENT),
        };
        put(clock, mhz)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: Device,
    reasons: *mut c_ulonglong,
) -> Ret {
    with_gpu(
        "nvmlDeviceGetCurrentClocksEventReasons",
        device,
        |gpu, _, _| put(reasons, gpu.throttle_reasons),
    )
}

/// The older name of the same query, which nvml-wrapper 0.13 still calls.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: Device,
    reasons: *mut c_ulonglong,
) -> Ret {
    with_gpu(
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        device,
        |gpu, _, _| put(reasons, gpu.throttle_reasons),
    )
}

/// `nvmlFieldValue_t`.
#[repr(C)]
pub struct FieldValue {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_uint,
    nvml_return: Ret,
    value: u64,
}

/// `NVML_FI_DEV_MEMORY_TEMP`: the only field the fake knows; others answer NOT_SUPPORTED.
const FI_DEV_MEMORY_TEMP: c_uint = 82;
/// `NVML_VALUE_TYPE_UNSIGNED_INT`.
const VALUE_TYPE_UNSIGNED_INT: c_uint = 1;

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: Device,
    count: i32,
    values: *mut FieldValue,
) -> Ret {
    with_gpu("nvmlDeviceGetFieldValues", device, |gpu, _, _| {
        if values.is_null() || count < 0 {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: the caller passes `count` values, as nvml.h requires.
        let values = unsafe { std::slice::from_raw_parts_mut(values, count as usize) };
        for value in values {
            if value.field_id == FI_DEV_MEMORY_TEMP {
                value.value_type = VALUE_TYPE_UNSIGNED_INT;
                value.value = u64::from(gpu.memory_temperature);
                value.nvml_return = 0;
            } else {
                value.nvml_return = ERROR_NOT_SUPPORTED;
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: Device,
    energy: *mut c_ulonglong,
) -> Ret {
    with_gpu(
        "nvmlDeviceGetTotalEnergyConsumption",
        device,
        |gpu, _, _| put(energy, gpu.energy_mj),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieReplayCounter(device: Device, value: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetPcieReplayCounter", device, |gpu, _, _| {
        put(value, gpu.pcie_replay)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: Device, milliwatts: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetPowerUsage", device, |gpu, _, _| {
        put(milliwatts, gpu.power_mw)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: Device,
    utilization: *mut Utilization,
) -> Ret {
    with_gpu("nvmlDeviceGetUtilizationRates", device, |gpu, _, _| {
        put(
            utilization,
            Utilization {
                gpu: gpu.gpu_util,
                memory: gpu.memory_util,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(device: Device, memory: *mut Memory) -> Ret {
    with_gpu("nvmlDeviceGetMemoryInfo", device, |gpu, _, _| {
        let m = &gpu.memory;
        put(
            memory,
            Memory {
                total: m.total,
                free: m.free(),
                used: m.used + m.reserved,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(device: Device, memory: *mut MemoryV2) -> Ret {
    with_gpu("nvmlDeviceGetMemoryInfo_v2", device, |gpu, _, _| {
        if memory.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        if (*memory).version != MEMORY_V2 {
            return Err(ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let m = &gpu.memory;
        put(
            memory,
            MemoryV2 {
                version: MEMORY_V2,
                total: m.total,
                reserved: m.reserved,
                free: m.free(),
                used: m.used,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: Device,
    error_type: c_uint,
    counter_type: c_uint,
    count: *mut c_ulonglong,
) -> Ret {
    with_gpu("nvmlDeviceGetTotalEccErrors", device, |gpu, _, _| {
        let e = &gpu.ecc;
        // nvmlMemoryErrorType_t: 0 corrected, 1 uncorrected; nvmlEccCounterType_t: 0
        // volatile (since boot), 1 aggregate (lifetime).
        let value = match (error_type, counter_type) {
            (0, 0) => e.corrected_volatile,
            (0, 1) => e.corrected_aggregate,
            (1, 0) => e.uncorrected_volatile,
            (1, 1) => e.uncorrected_aggregate,
            _ => return Err(ERROR_INVALID_ARGUMENT),
        };
        put(count, value)
    })
}

/// Both retired-page calls: a count query when `*count` is too small (clients first
/// ask with 0), else the pages. Addresses and timestamps are made up but stable.
unsafe fn retired_pages(
    name: &str,
    device: Device,
    cause: c_uint,
    count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Ret {
    with_gpu(name, device, |gpu, _, _| {
        let pages = match cause {
            0 => gpu.retired_pages.single_bit, // multiple single-bit ECC errors
            1 => gpu.retired_pages.double_bit,
            _ => return Err(ERROR_INVALID_ARGUMENT),
        };
        if count.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let room = *count;
        *count = pages;
        if room < pages {
            return Err(ERROR_INSUFFICIENT_SIZE);
        }
        if pages > 0 && addresses.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        for k in 0..pages as usize {
            *addresses.add(k) = (u64::from(cause) + 1) << 32 | (k as u64) << 12;
            if !timestamps.is_null() {
                *timestamps.add(k) = 1_700_000_000 + k as u64;
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: Device,
    cause: c_uint,
    count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> Ret {
    let timestamps = std::ptr::null_mut();
    retired_pages(
        "nvmlDeviceGetRetiredPages",
        device,
        cause,
        count,
        addresses,
        timestamps,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: Device,
    cause: c_uint,
    count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Ret {
    retired_pages(
        "nvmlDeviceGetRetiredPages_v2",
        device,
        cause,
        count,
        addresses,
        timestamps,
    )
}

/// `isPending` is an `nvmlEnableState_t`: 1 enabled (pending), 0 disabled.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    device: Device,
    is_pending: *mut c_uint,
) -> Ret {
    with_gpu(
        "nvmlDeviceGetRetiredPagesPendingStatus",
        device,
        |gpu, _, _| put(is_pending, c_uint::from(gpu.retired_pages.pending)),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: Device,
    corrected: *mut c_uint,
    uncorrected: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> Ret {
    with_gpu("nvmlDeviceGetRemappedRows", device, |gpu, _, _| {
        let r = &gpu.remapped_rows;
        put(corrected, r.corrected)?;
        put(uncorrected, r.uncorrected)?;
        put(is_pending, c_uint::from(r.pending))?;
        put(failure_occurred, c_uint::from(r.failure))
    })
}
