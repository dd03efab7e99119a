//! Event sets: the state's `events` are delivered through `nvmlEventSetWait`, each at most
//! once per process, to a set on which its GPU is registered for its type and which existed
//! when the event happened (`at_ns`), as a real driver delivers it.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_uint, c_ulonglong};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::codes::{
    Ret, ERROR_GPU_IS_LOST, ERROR_INVALID_ARGUMENT, ERROR_NOT_SUPPORTED, ERROR_TIMEOUT, SUCCESS,
};
use crate::guard::{enter, enter_device, handle, lookup, Device, POLL};
use crate::state::{current, lock, Event, State};
use crate::{answer, put};

/// What an `nvmlEventSet_t` points at: the GPUs registered on it, each with its type mask.
pub struct EventSet {
    registered: Mutex<HashMap<usize, u64>>,
    /// When the set was created (nanoseconds since the Unix epoch): it hears only events
    /// that happened since.
    created_ns: u64,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `nvmlEventSet_t`.
pub type EventSetHandle = *mut EventSet;

/// `nvmlEventData_t`, the `_v2` wait's output.
#[repr(C)]
pub struct EventData {
    device: Device,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// The older `nvmlEventData_t` that the unversioned `nvmlEventSetWait` fills: no instance
/// ids, so writing the `_v2` layout there would overrun the caller's struct.
#[repr(C)]
pub struct EventDataV1 {
    device: Device,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
}

/// Live sets by handle address. Lookups clone the `Arc`, so a set freed by one thread
/// while another waits on it stays valid until that wait returns.
static SETS: Mutex<Option<HashMap<usize, Arc<EventSet>>>> = Mutex::new(None);

/// Ids of the events already delivered, so rewriting the state file does not repeat them.
static DELIVERED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn find_set(set: EventSetHandle) -> Result<Arc<EventSet>, Ret> {
    lock(&SETS)
        .as_ref()
        .and_then(|sets| sets.get(&(set as usize)).cloned())
        .ok_or(ERROR_INVALID_ARGUMENT)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut EventSetHandle) -> Ret {
    answer(enter("nvmlEventSetCreate", None).and_then(|_| {
        let created = Arc::new(EventSet {
            registered: Mutex::new(HashMap::new()),
            created_ns: now_ns(),
        });
        let address = Arc::as_ptr(&created).cast_mut();
        put(set, address)?;
        lock(&SETS)
            .get_or_insert_with(HashMap::new)
            .insert(address as usize, created);
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetFree(set: EventSetHandle) -> Ret {
    answer(enter("nvmlEventSetFree", None).and_then(|_| {
        lock(&SETS)
            .as_mut()
            .and_then(|sets| sets.remove(&(set as usize)))
            .map(drop)
            .ok_or(ERROR_INVALID_ARGUMENT)
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: Device,
    types: *mut c_ulonglong,
) -> Ret {
    let name = "nvmlDeviceGetSupportedEventTypes";
    answer(
        enter_device(name, device)
            .and_then(|(state, i)| put(types, state.gpus[i].supported_events)),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: Device,
    types: c_ulonglong,
    set: EventSetHandle,
) -> Ret {
    answer(
        enter_device("nvmlDeviceRegisterEvents", device).and_then(|(state, i)| {
            let set = find_set(set)?;
            if types & !state.gpus[i].supported_events != 0 {
                return Err(ERROR_NOT_SUPPORTED);
            }
            *lock(&set.registered).entry(i).or_insert(0) |= types;
            Ok(())
        }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: EventSetHandle,
    data: *mut EventData,
    timeout_ms: c_uint,
) -> Ret {
    if data.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    answer(
        wait("nvmlEventSetWait_v2", set, timeout_ms).and_then(|event| {
            put(
                data,
                EventData {
                    device: handle(event.gpu),
                    event_type: event.event_type,
                    event_data: event.data,
                    gpu_instance_id: event.gpu_instance_id,
                    compute_instance_id: event.compute_instance_id,
                },
            )
        }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait(
    set: EventSetHandle,
    data: *mut EventDataV1,
    timeout_ms: c_uint,
) -> Ret {
    if data.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    answer(wait("nvmlEventSetWait", set, timeout_ms).and_then(|event| {
        put(
            data,
            EventDataV1 {
                device: handle(event.gpu),
                event_type: event.event_type,
                event_data: event.data,
            },
        )
    }))
}

/// The fields of the event delivered, copied out of the state it came from.
struct Delivered {
    gpu: usize,
    event_type: u64,
    data: u64,
    gpu_instance_id: u32,
    compute_instance_id: u32,
}

/// Polls the state every [`POLL`] until an undelivered event for this set appears (which
/// is then marked delivered), a registered GPU is lost, the state forces a return code
/// for the wait, or `timeout_ms` passes.
fn wait(name: &str, set: EventSetHandle, timeout_ms: c_uint) -> Result<Delivered, Ret> {
    let mut state = enter(name, None)?;
    let set = find_set(set)?;
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    // Look at a state once: an idle wait then costs a sleep and a cache check per poll,
    // like a real driver's wait costs (almost) nothing.
    let mut examined: Option<Arc<State>> = None;
    loop {
        if examined
            .as_ref()
            .is_none_or(|seen| !Arc::ptr_eq(seen, &state))
        {
            let registered = lock(&set.registered).clone();
            if let Some(event) = take_event(&state, &registered, set.created_ns) {
                return Ok(event);
            }
            if registered
                .keys()
                .any(|&i| state.gpus.get(i).is_none_or(|gpu| gpu.lost))
            {
                return Err(ERROR_GPU_IS_LOST);
            }
            examined = Some(Arc::clone(&state));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ERROR_TIMEOUT);
        }
        std::thread::sleep(POLL.min(left));
        state = current();
        // A return code forced while the wait blocks takes effect at once.
        if let Some(code) = lookup(&state.returns, name).filter(|&c| c != SUCCESS) {
            return Err(code);
        }
    }
}

fn take_event(
    state: &State,
    registered: &HashMap<usize, u64>,
    created_ns: u64,
) -> Option<Delivered> {
    if state.events.is_empty() {
        return None;
    }
    let wanted = |e: &Event| {
        registered
            .get(&e.gpu)
            .is_some_and(|mask| mask & e.event_type != 0)
            && e.at_ns.is_none_or(|at| at >= created_ns)
    };
    // Checked and marked under one lock, so two sets waiting at once never both get it.
    let mut delivered = lock(&DELIVERED);
    let delivered = delivered.get_or_insert_with(HashSet::new);
    let event = state
        .events
        .iter()
        .find(|e| wanted(e) && !delivered.contains(&e.key()))?;
    delivered.insert(event.key());
    Some(Delivered {
        gpu: event.gpu,
        event_type: event.event_type,
        data: event.data,
        gpu_instance_id: event.gpu_instance_id,
        compute_instance_id: event.compute_instance_id,
    })
}
