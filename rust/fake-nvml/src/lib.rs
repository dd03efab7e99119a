//! A fake `libnvidia-ml.so.1` for tests: it exports NVML's functions with the real C ABI,
//! struct layouts and return codes, so nvidia-ml-py and nvml-wrapper load and read it
//! like the driver, and it answers from a JSON state file that a test rewrites at run
//! time to inject GPU faults (`python -m runwarden.testing` writes it).
//!
//! # The state file
//!
//! Its path is in `RUNWARDEN_FAKE_NVML_STATE`. Each call `stat`s it and re-parses only
//! when it changed. No variable or no file: one healthy GPU. A file that does not parse
//! is reported on stderr and the previous state is kept. Every key may be left out
//! (defaults shown); unknown keys are an error, so a typo does not go unnoticed.
//!
//! ```json
//! {
//!   "driver_version": "550.54.15",
//!   "nvml_version": null,               // null: "12." + driver_version
//!   "cuda_driver_version": 12040,
//!   "gpus": [{                          // GPU count = length; default one GPU
//!     "name": "NVIDIA H100 80GB HBM3",
//!     "uuid": null,                     // null: "GPU-00000000-0000-4000-8000-<index as 12 hex>"
//!     "pci_bus_id": null,               // null: "00000000:<0x18+index as 2 hex>:00.0"
//!     "temperature": 40,                // degrees C
//!     "sm_clock": 1980, "mem_clock": 2619, "video_clock": 1755,   // MHz
//!     "graphics_clock": null,           // null: sm_clock
//!     "throttle_reasons": 0,            // nvmlClocksEventReason* bits
//!     "power_mw": 72000,
//!     "gpu_util": 0, "memory_util": 0,  // percent
//!     "memory": {"total": 85899345920, "reserved": 536870912, "used": 0,
//!                "free": null},         // bytes; null: total - reserved - used
//!     "ecc": {"corrected_volatile": 0, "corrected_aggregate": 0,
//!             "uncorrected_volatile": 0, "uncorrected_aggregate": 0},
//!     "retired_pages": {"single_bit": 0, "double_bit": 0, "pending": false},
//!     "remapped_rows": {"corrected": 0, "uncorrected": 0, "pending": false, "failure": false},
//!     "supported_events": 415,          // 0x19F
//!     "lost": false,                    // every call naming this GPU: GPU_IS_LOST (15)
//!     "returns": {},                    // as the top-level key, for this GPU only
//!     "hang": {}
//!   }],
//!   "returns": {"nvmlDeviceGetTemperature": 3},   // function -> forced return code
//!   "hang": {"nvmlDeviceGetTemperature": 30},     // function -> seconds each call blocks
//!   "events": [{"id": "x1", "gpu": 0, "type": 8, "data": 79,
//!               "gpu_instance_id": 4294967295, "compute_instance_id": 4294967295,
//!               "at_ns": 1764800000000000000}]   // heard by event sets created before it
//! }
//! ```
//!
//! - `returns`/`hang` keys are function names. An unversioned name also covers its
//!   versioned variants (`nvmlDeviceGetMemoryInfo` covers `_v2`), `nvmlInit` covers
//!   `nvmlInitWithFlags`, and the throttle-reasons and event-reasons queries cover each
//!   other. A hang ends early when its entry is removed from the file.
//! - A GPU removed from `gpus` while a client holds its handle answers `GPU_IS_LOST`.
//! - `events` are delivered once each per process (by `id`, a JSON string or number)
//!   through `nvmlEventSetWait_v2` to a set on which their GPU is registered for their
//!   `type` (default 8, critical XID; 2 is a double-bit ECC error); `data` is the XID.
//!   A waiting call polls the file every 20 ms.

// The exported names are NVML's, and the C callers follow nvml.h's contract for every
// pointer argument, which is all the safety documentation these functions could give.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod codes;
mod device;
mod events;
mod guard;
mod state;

use std::ffi::{c_char, c_int, c_uint};

use codes::{Ret, ERROR_INSUFFICIENT_SIZE, ERROR_INVALID_ARGUMENT, ERROR_UNINITIALIZED, SUCCESS};
use guard::{enter, overrides};

/// The C return code for an internal result.
fn answer(result: Result<(), Ret>) -> Ret {
    match result {
        Ok(()) => SUCCESS,
        Err(code) => code,
    }
}

/// Writes one output argument; a null pointer is the caller's invalid argument.
unsafe fn put<T>(out: *mut T, value: T) -> Result<(), Ret> {
    if out.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    out.write(value);
    Ok(())
}

/// Copies `text` NUL-terminated into a caller's buffer of `length` bytes, failing with
/// `INSUFFICIENT_SIZE` as NVML does when it does not fit.
unsafe fn put_str(buffer: *mut c_char, length: c_uint, text: &str) -> Result<(), Ret> {
    if buffer.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    if text.len() + 1 > length as usize {
        return Err(ERROR_INSUFFICIENT_SIZE);
    }
    std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buffer, text.len());
    *buffer.add(text.len()) = 0;
    Ok(())
}

// ---- init and shutdown ----

fn init(name: &str) -> Ret {
    // A forced code here stands for a machine without a working driver
    // (e.g. 9, DRIVER_NOT_LOADED); then NVML stays uninitialised.
    answer(overrides(name, None).map(|_| guard::init()))
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    init("nvmlInit_v2")
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> Ret {
    init("nvmlInit")
}

/// The flags (no GPUs, no attach) change nothing here.
#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init("nvmlInitWithFlags")
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    answer(overrides("nvmlShutdown", None).and_then(|_| {
        if guard::shutdown() {
            Ok(())
        } else {
            Err(ERROR_UNINITIALIZED)
        }
    }))
}

/// Needs no init, as in NVML: clients call it to explain a failed init.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    codes::error_string(result)
}

// ---- system queries ----

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    answer(
        enter("nvmlSystemGetDriverVersion", None)
            .and_then(|s| put_str(version, length, &s.driver_version)),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    answer(enter("nvmlSystemGetNVMLVersion", None).and_then(|s| {
        let text = match &s.nvml_version {
            Some(v) => v.clone(),
            None => format!("12.{}", s.driver_version),
        };
        put_str(version, length, &text)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> Ret {
    answer(
        enter("nvmlSystemGetCudaDriverVersion_v2", None)
            .and_then(|s| put(version, s.cuda_driver_version)),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> Ret {
    answer(
        enter("nvmlSystemGetCudaDriverVersion", None)
            .and_then(|s| put(version, s.cuda_driver_version)),
    )
}
