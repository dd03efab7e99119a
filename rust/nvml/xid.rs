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

/// Register every GPU for the events we act on. Errors say which GPU refused.
pub fn register<'n>(nvml: &'n Nvml, count: u32, watch: &Watch) -> Result<EventSet<'n>, String> {
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let mut set = watch
        .call("nvmlEventSetCreate", || nvml.create_event_set())
        .map_err(|e| format!("nvmlEventSetCreate: {e}"))?;
    for index in 0..count {
        let device = watch
            .call("nvmlDeviceGetHandleByIndex_v2", || {
                nvml.device_by_index(index)
            })
            .map_err(|e| format!("GPU {index}: {e}"))?;
        let supported = match watch.call("nvmlDeviceGetSupportedEventTypes", || {
            device.supported_event_types()
        }) {
            Ok(types) => types,
            Err(NvmlError::NotSupported) => continue,
            Err(e) => {
                return Err(format!(
                    "GPU {index}: nvmlDeviceGetSupportedEventTypes: {e}"
                ))
            }
        };
        let types = supported & wanted;
        if types.is_empty() {
            continue;
        }
        set = watch
            .call("nvmlDeviceRegisterEvents", || {
                device.register_events(types, set)
            })
            .map_err(|e| format!("GPU {index}: nvmlDeviceRegisterEvents: {}", e.error))?;
    }
    Ok(set)
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
