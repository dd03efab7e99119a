//! What every exported call does before answering: the init check, device-handle checks,
//! and the state's fault overrides (hangs, forced return codes, lost GPUs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codes::{Ret, ERROR_GPU_IS_LOST, ERROR_INVALID_ARGUMENT, ERROR_UNINITIALIZED, SUCCESS};
use crate::state::{current, State, MAX_GPUS};

/// How often a blocked call (an event wait, a hang) looks at the state file again. A real
/// driver's event wait costs no CPU while it blocks; polling every 50 ms keeps the fake's
/// close to that (a runner's idle CPU is measured through it) and still delivers an
/// injected event well within the second SPEC G2 allows.
pub const POLL: Duration = Duration::from_millis(50);

/// NVML counts `nvmlInit*` calls and only shuts down at the matching last `nvmlShutdown`.
static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

pub fn init() {
    INIT_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// False when NVML was not initialised (nothing to shut down).
pub fn shutdown() -> bool {
    INIT_COUNT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The opaque thing an `nvmlDevice_t` points at. Real handles are pointers into the
/// driver's own tables; ours point into a static table, so they are stable for the life
/// of the process and a bad pointer can be told from a good one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceSlot {
    index: u32,
}

/// `nvmlDevice_t`.
pub type Device = *mut DeviceSlot;

/// One slot per GPU, slot i holding index i: a table of handles that are addresses.
const fn slots() -> [DeviceSlot; MAX_GPUS] {
    let mut slots = [DeviceSlot { index: 0 }; MAX_GPUS];
    let mut i = 0;
    while i < MAX_GPUS {
        slots[i].index = i as u32;
        i += 1;
    }
    slots
}

static DEVICES: [DeviceSlot; MAX_GPUS] = slots();

pub fn handle(index: usize) -> Device {
    // Never written through: callers only pass it back to us.
    std::ptr::from_ref(&DEVICES[index]).cast_mut()
}

/// One MIG device handle per GPU, the table beside `DEVICES`: the fake answers only the
/// calls that lead from a MIG device to its GPU.
static MIG_DEVICES: [DeviceSlot; MAX_GPUS] = slots();

pub fn mig_handle(parent: usize) -> Device {
    std::ptr::from_ref(&MIG_DEVICES[parent]).cast_mut()
}

/// The GPU a MIG device handle belongs to, or `None` for anything else.
pub fn mig_parent_of(device: Device) -> Option<usize> {
    let base = MIG_DEVICES.as_ptr() as usize;
    let offset = (device as usize).checked_sub(base)?;
    let size = std::mem::size_of::<DeviceSlot>();
    let index = offset / size;
    (offset % size == 0 && index < MAX_GPUS).then(|| MIG_DEVICES[index].index as usize)
}

/// The GPU index a handle stands for, or `None` for anything we did not hand out.
pub fn index_of(device: Device) -> Option<usize> {
    let base = DEVICES.as_ptr() as usize;
    let offset = (device as usize).checked_sub(base)?;
    let size = std::mem::size_of::<DeviceSlot>();
    let index = offset / size;
    (offset % size == 0 && index < MAX_GPUS).then(|| DEVICES[index].index as usize)
}

/// The entry of every call: fails with `UNINITIALIZED` before `nvmlInit`, else as
/// [`overrides`].
pub fn enter(name: &str, gpu: Option<usize>) -> Result<Arc<State>, Ret> {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return Err(ERROR_UNINITIALIZED);
    }
    overrides(name, gpu)
}

/// The entry of a call that names a device by handle: also checks the handle and what
/// the state says about that GPU. Returns the state and the GPU's index.
pub fn enter_device(name: &str, device: Device) -> Result<(Arc<State>, usize), Ret> {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return Err(ERROR_UNINITIALIZED);
    }
    let index = index_of(device).ok_or(ERROR_INVALID_ARGUMENT)?;
    let state = overrides(name, Some(index))?;
    check_gpu(&state, name, index)?;
    Ok((state, index))
}

/// Blocks while the state says `name` hangs, then fails with the state's forced return
/// code for `name`, if any. Used without the init check by `nvmlInit*` themselves.
pub fn overrides(name: &str, gpu: Option<usize>) -> Result<Arc<State>, Ret> {
    let mut state = current();
    if let Some(seconds) = hang_seconds(&state, name, gpu) {
        hang(name, gpu, seconds);
        state = current();
    }
    match lookup(&state.returns, name) {
        Some(code) if code != SUCCESS => Err(code),
        _ => Ok(state),
    }
}

/// A GPU that left the list, or is marked lost, answers `GPU_IS_LOST` (a handle taken
/// before the GPU fell off the bus behaves so on a real driver); then the GPU's own
/// forced return codes apply.
pub fn check_gpu(state: &State, name: &str, index: usize) -> Result<(), Ret> {
    let gpu = state.gpus.get(index).ok_or(ERROR_GPU_IS_LOST)?;
    if gpu.lost {
        return Err(ERROR_GPU_IS_LOST);
    }
    match lookup(&gpu.returns, name) {
        Some(code) if code != SUCCESS => Err(code),
        _ => Ok(()),
    }
}

fn hang_seconds(state: &State, name: &str, gpu: Option<usize>) -> Option<f64> {
    let own = gpu
        .and_then(|i| state.gpus.get(i))
        .and_then(|g| lookup(&g.hang, name));
    own.or_else(|| lookup(&state.hang, name))
        .filter(|s| *s > 0.0)
}

/// Sleeps `seconds`, but stops early once the state no longer says the call hangs, so a
/// test can release a stuck thread; a changed duration counts from the call's start.
fn hang(name: &str, gpu: Option<usize>, mut seconds: f64) {
    let start = Instant::now();
    loop {
        let left = seconds - start.elapsed().as_secs_f64();
        if left <= 0.0 {
            return;
        }
        std::thread::sleep(POLL.min(Duration::from_secs_f64(left)));
        match hang_seconds(&current(), name, gpu) {
            Some(s) => seconds = s,
            None => return,
        }
    }
}

/// Looks `name` up under its own name, then its unversioned name (`nvmlInit_v2` ->
/// `nvmlInit`), then the name its family goes by, so one override covers every variant a
/// client may call: nvidia-ml-py and nvml-wrapper pick different ones.
pub fn lookup<T: Copy>(map: &HashMap<String, T>, name: &str) -> Option<T> {
    if map.is_empty() {
        return None;
    }
    let base = unversioned(name);
    let family = match base {
        "nvmlInitWithFlags" => "nvmlInit",
        "nvmlDeviceGetCurrentClocksEventReasons" => "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons" => "nvmlDeviceGetCurrentClocksEventReasons",
        other => other,
    };
    [name, base, family]
        .into_iter()
        .find_map(|key| map.get(key).copied())
}

fn unversioned(name: &str) -> &str {
    match name.rsplit_once("_v") {
        Some((base, version))
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}
