//! The JSON state file that drives the fake (schema in the crate docs), and the cache that
//! re-reads it only when it changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::codes::Ret;

/// The environment variable naming the state file.
pub const STATE_ENV: &str = "RUNWARDEN_FAKE_NVML_STATE";

/// How many GPUs one state may describe: handles point into a static table this long.
pub const MAX_GPUS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    pub driver_version: String,
    /// `None`: "12." followed by the driver version, as real drivers report it.
    pub nvml_version: Option<String>,
    pub cuda_driver_version: i32,
    pub gpus: Vec<Gpu>,
    /// Function name -> return code for every call of it, on any GPU.
    pub returns: HashMap<String, Ret>,
    /// Function name -> seconds each call of it blocks before answering.
    pub hang: HashMap<String, f64>,
    pub events: Vec<Event>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            driver_version: "550.54.15".into(),
            nvml_version: None,
            cuda_driver_version: 12040,
            gpus: vec![Gpu::default()],
            returns: HashMap::new(),
            hang: HashMap::new(),
            events: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    /// `None`: derived from the index, see [`Gpu::uuid`].
    pub uuid: Option<String>,
    /// `None`: derived from the index, see [`Gpu::pci_bus_id`].
    pub pci_bus_id: Option<String>,
    /// Degrees C.
    pub temperature: u32,
    /// Degrees C, the memory's (`NVML_FI_DEV_MEMORY_TEMP` through `nvmlDeviceGetFieldValues`).
    pub memory_temperature: u32,
    /// Millijoules since the driver loaded (`nvmlDeviceGetTotalEnergyConsumption`).
    pub energy_mj: u64,
    /// PCIe replays (`nvmlDeviceGetPcieReplayCounter`).
    pub pcie_replay: u32,
    /// UUIDs of this GPU's MIG devices: `nvmlDeviceGetHandleByUUID` finds them, and
    /// `nvmlDeviceGetDeviceHandleFromMigDeviceHandle` leads back to this GPU.
    pub mig_uuids: Vec<String>,
    /// MHz, as `nvmlDeviceGetClockInfo` reports them. `graphics_clock` `None` = `sm_clock`.
    pub sm_clock: u32,
    pub mem_clock: u32,
    pub graphics_clock: Option<u32>,
    pub video_clock: u32,
    /// `nvmlClocksEventReason*` bits.
    pub throttle_reasons: u64,
    /// Milliwatts.
    pub power_mw: u32,
    /// Percent.
    pub gpu_util: u32,
    pub memory_util: u32,
    pub memory: Memory,
    pub ecc: Ecc,
    pub retired_pages: RetiredPages,
    pub remapped_rows: RemappedRows,
    /// `nvmlEventType*` bits that `nvmlDeviceRegisterEvents` accepts for this GPU.
    pub supported_events: u64,
    /// Every call naming this GPU returns `NVML_ERROR_GPU_IS_LOST`.
    pub lost: bool,
    /// Like [`State::returns`] and [`State::hang`], for calls naming this GPU only.
    pub returns: HashMap<String, Ret>,
    pub hang: HashMap<String, f64>,
    /// The fake CUDA driver's faults for this GPU (`rust/fake-cuda`); NVML ignores them.
    pub cuda: serde_json::Value,
}

impl Default for Gpu {
    fn default() -> Self {
        Self {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: None,
            pci_bus_id: None,
            temperature: 40,
            memory_temperature: 45,
            energy_mj: 1_000_000,
            pcie_replay: 0,
            mig_uuids: Vec::new(),
            sm_clock: 1980,
            mem_clock: 2619,
            graphics_clock: None,
            video_clock: 1755,
            throttle_reasons: 0,
            power_mw: 72_000,
            gpu_util: 0,
            memory_util: 0,
            memory: Memory::default(),
            ecc: Ecc::default(),
            retired_pages: RetiredPages::default(),
            remapped_rows: RemappedRows::default(),
            // Single/double-bit ECC, P-state, critical XID, clock, power source, MIG config.
            supported_events: 0x19F,
            lost: false,
            returns: HashMap::new(),
            hang: HashMap::new(),
            cuda: serde_json::Value::Null,
        }
    }
}

impl Gpu {
    pub fn uuid(&self, index: usize) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("GPU-00000000-0000-4000-8000-{index:012x}"))
    }

    pub fn pci_bus_id(&self, index: usize) -> String {
        self.pci_bus_id
            .clone()
            .unwrap_or_else(|| format!("00000000:{:02X}:00.0", 0x18 + index))
    }

    pub fn graphics_clock(&self) -> u32 {
        self.graphics_clock.unwrap_or(self.sm_clock)
    }
}

/// Bytes. `free` `None` = total - reserved - used. NVML's v1 struct reports
/// `used + reserved` as used; `_v2` reports them apart.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    pub total: u64,
    pub reserved: u64,
    pub used: u64,
    pub free: Option<u64>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            total: 80 << 30,
            reserved: 512 << 20,
            used: 0,
            free: None,
        }
    }
}

impl Memory {
    pub fn free(&self) -> u64 {
        self.free.unwrap_or_else(|| {
            self.total
                .saturating_sub(self.reserved)
                .saturating_sub(self.used)
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ecc {
    pub corrected_volatile: u64,
    pub corrected_aggregate: u64,
    pub uncorrected_volatile: u64,
    pub uncorrected_aggregate: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetiredPages {
    /// Pages retired for multiple single-bit errors (cause 0) and for a double-bit error (1).
    pub single_bit: u32,
    pub double_bit: u32,
    pub pending: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemappedRows {
    pub corrected: u32,
    pub uncorrected: u32,
    pub pending: bool,
    pub failure: bool,
}

/// One event to deliver once through `nvmlEventSetWait`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Any JSON string or number; an event whose id was delivered is never delivered again.
    pub id: serde_json::Value,
    pub gpu: usize,
    /// `nvmlEventType*`; default critical XID.
    #[serde(rename = "type", default = "xid_event_type")]
    pub event_type: u64,
    /// The XID number for XID events.
    #[serde(default)]
    pub data: u64,
    /// 0xFFFFFFFF (no MIG instance) unless set.
    #[serde(default = "no_instance")]
    pub gpu_instance_id: u32,
    #[serde(default = "no_instance")]
    pub compute_instance_id: u32,
    /// When it happened (nanoseconds since the Unix epoch): a real driver delivers an event
    /// only to event sets that existed then, so a runwarden started later never hears it.
    /// Unset: delivered to any set.
    #[serde(default)]
    pub at_ns: Option<u64>,
}

fn xid_event_type() -> u64 {
    0x8
}

fn no_instance() -> u32 {
    u32::MAX
}

impl Event {
    /// The id as a set key: the JSON text, so `7` and `"7"` are different events.
    pub fn key(&self) -> String {
        self.id.to_string()
    }
}

/// What identifies one version of the file without reading it. The Python helper writes
/// by rename (new inode) and moves mtime strictly forward, so every write changes this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

struct Cache {
    path: Option<OsString>,
    key: Option<FileKey>,
    state: Arc<State>,
    /// The writer's change counter (`<state>.generation`), mapped; its value when the file
    /// was last looked at; and when that was.
    generation: Option<Generation>,
    seen: u64,
    checked: Instant,
}

/// How long an answer may come from the cache while the generation counter is unchanged.
/// `runwarden.testing` bumps the counter on every write, so its changes are seen at once;
/// a file edited by hand (or a changed `RUNWARDEN_FAKE_NVML_STATE`) is seen within this.
/// Checking a mapped counter instead of `stat`ing the file on every call keeps the fake's
/// own cost small next to its callers' (what the benchmarks compare): a sampler that
/// wakes every 20 ms would otherwise pay a `stat` with cold caches, about 20 µs, on every
/// sample, more than the rest of an 8-GPU sample through Rust.
const RECHECK: Duration = Duration::from_millis(100);
/// The same without a counter file to watch: the file itself is the only signal.
const RECHECK_UNCOUNTED: Duration = Duration::from_millis(1);

/// An 8-byte counter file mapped read-only; the writer changes it in place (`pwrite`).
struct Generation {
    counter: *const AtomicU64,
}

// SAFETY: the mapping is read-only, never unmapped, and read through an atomic.
unsafe impl Send for Generation {}

impl Generation {
    fn map(state_path: &OsString) -> Option<Generation> {
        use std::os::fd::AsRawFd;
        let mut path = state_path.clone();
        path.push(".generation");
        let file = std::fs::File::open(&path).ok()?;
        if file.metadata().ok()?.len() < 8 {
            return None;
        }
        // SAFETY: a fresh shared read-only mapping of 8 bytes of a regular file; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        (addr != libc::MAP_FAILED).then_some(Generation {
            counter: addr as *const AtomicU64,
        })
    }

    fn value(&self) -> u64 {
        // SAFETY: `counter` points into a live, page-aligned mapping of at least 8 bytes.
        unsafe { (*self.counter).load(Ordering::Acquire) }
    }
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// A panic inside an `extern "C"` function aborts the process, so a poisoned lock can
/// only be left by a thread that no longer exists; its data is still consistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The state to answer from now. While the writer's generation counter is unchanged this
/// costs one atomic load; otherwise (or once per [`RECHECK`]) one `stat`, and a parse when
/// the file changed. The environment variable is read on that slow path, so a test may
/// point it elsewhere at run time (seen within a millisecond).
pub fn current() -> Arc<State> {
    let mut cache = lock(&CACHE);
    if let Some(cached) = cache.as_ref() {
        let (generation, recheck) = match &cached.generation {
            Some(counter) => (counter.value(), RECHECK),
            None => (0, RECHECK_UNCOUNTED),
        };
        if generation == cached.seen && cached.checked.elapsed() < recheck {
            return Arc::clone(&cached.state);
        }
    }
    let path = std::env::var_os(STATE_ENV).filter(|p| !p.is_empty());
    // Read the counter before the file: a write landing in between is seen next time.
    let generation = match cache.as_mut() {
        Some(cached) if cached.path == path && cached.generation.is_some() => {
            cached.generation.take()
        }
        _ => path.as_ref().and_then(Generation::map),
    };
    let seen = generation.as_ref().map_or(0, Generation::value);
    let key = path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|meta| FileKey::of(&meta));
    let unchanged = cache
        .as_ref()
        .filter(|cached| cached.path == path && cached.key == key)
        .map(|cached| Arc::clone(&cached.state));
    let state = match (unchanged, &path, key) {
        (Some(state), _, _) => state,
        (None, Some(p), Some(_)) => match load(p) {
            Ok(state) => Arc::new(state),
            Err(message) => {
                // A half-edited file must not make the GPUs vanish: keep answering from the
                // last good state and say why once per version of the file.
                eprintln!(
                    "fake-nvml: ignoring {}: {message}; keeping the previous state",
                    p.to_string_lossy()
                );
                cache
                    .as_ref()
                    .map(|cached| Arc::clone(&cached.state))
                    .unwrap_or_default()
            }
        },
        _ => Arc::new(State::default()),
    };
    *cache = Some(Cache {
        path,
        key,
        state: Arc::clone(&state),
        generation,
        seen,
        checked: Instant::now(),
    });
    state
}

fn load(path: &OsString) -> Result<State, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let state: State = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if state.gpus.len() > MAX_GPUS {
        return Err(format!(
            "{} GPUs listed, at most {MAX_GPUS} are supported",
            state.gpus.len()
        ));
    }
    Ok(state)
}
