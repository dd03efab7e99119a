//! The XID event watcher: waits on an NVML event set so a critical XID or a double-bit
//! ECC error is acted on within a second, not at the next sample (SPEC G2).

use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

use super::read::failure;
use super::sample::NvmlFailure;
use super::watchdog::Watch;

/// How long one wait blocks; bounds how long a stop waits for this thread.
pub const WAIT: Duration = Duration::from_millis(250);

/// What one wait brought.
pub enum Heard {
    Nothing,
    Xid {
        gpu: Option<u32>,
        xid: u64,
    },
    DoubleBitEcc {
        gpu: Option<u32>,
    },
    /// The wait failed with something other than its timeout: the watcher ends.
    Failed(NvmlFailure),
}

/// Register each watched GPU for the events we act on. The set, and what each GPU watches
/// ("xid, double-bit ecc", or "none: why"); only a set that cannot be made is an error.
pub fn register<'n>(
    nvml: &'n Nvml,
    watched: &[u32],
    watch: &Watch,
) -> Result<(EventSet<'n>, Vec<(u32, String)>), String> {
    let set = watch
        .call("nvmlEventSetCreate", || nvml.create_event_set())
        .map_err(|e| format!("nvmlEventSetCreate: {e}"))?;
    let each = watched
        .iter()
        .map(|&index| {
            let status = match watch.call("nvmlDeviceGetHandleByIndex_v2", || {
                nvml.device_by_index(index)
            }) {
                Err(e) => format!("none: nvmlDeviceGetHandleByIndex: {e}"),
                Ok(device) => register_one(nvml, &device, &set, watch),
            };
            (index, status)
        })
        .collect();
    Ok((set, each))
}

/// One GPU into the set, through the raw call: nvml-wrapper frees the whole set when one
/// GPU refuses, and one GPU must not take the others' events with it.
fn register_one(
    nvml: &Nvml,
    device: &nvml_wrapper::Device<'_>,
    set: &EventSet<'_>,
    watch: &Watch,
) -> String {
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let supported = match watch.call("nvmlDeviceGetSupportedEventTypes", || {
        device.supported_event_types()
    }) {
        Ok(types) => types & wanted,
        Err(NvmlError::NotSupported) => EventTypes::empty(),
        Err(e) => return format!("none: nvmlDeviceGetSupportedEventTypes: {e}"),
    };
    if supported.is_empty() {
        return "none: the GPU reports neither XID nor double-bit ECC events".to_owned();
    }
    let Ok(register) = nvml.lib().nvmlDeviceRegisterEvents.as_ref() else {
        return "none: the driver has no nvmlDeviceRegisterEvents".to_owned();
    };
    // SAFETY: a live device handle and a live event set, as nvml.h asks.
    let code = watch.call("nvmlDeviceRegisterEvents", || unsafe {
        register(device.handle(), supported.bits(), set.handle())
    });
    if code != 0 {
        return format!("none: nvmlDeviceRegisterEvents answered NVML error {code}");
    }
    let mut names = Vec::new();
    if supported.contains(EventTypes::CRITICAL_XID_ERROR) {
        names.push("xid");
    }
    if supported.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        names.push("double-bit ecc");
    }
    names.join(", ")
}

/// Wait once for an event.
pub fn wait(set: &EventSet<'_>, watch: &Watch) -> Heard {
    let millis = WAIT.as_millis() as u32;
    match watch.call_allowing("nvmlEventSetWait_v2", WAIT, || set.wait(millis)) {
        Ok(data) => {
            let gpu = watch
                .call("nvmlDeviceGetIndex", || data.device.index())
                .ok();
            if data.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                Heard::DoubleBitEcc { gpu }
            } else if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                match data.event_data {
                    Some(XidError::Value(xid)) => Heard::Xid { gpu, xid },
                    _ => Heard::Nothing,
                }
            } else {
                Heard::Nothing
            }
        }
        Err(NvmlError::Timeout) => Heard::Nothing,
        Err(error) => Heard::Failed(failure(&error)),
    }
}
