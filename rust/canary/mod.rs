//! The compute canary (SPEC G7): a known-answer test on each watched GPU, in a CUDA context
//! of its own, every `gpu_canary_seconds`, after any failed health check and when asked
//! (`POST /canary` on the admin port). NVML sees neither a GPU that computes wrong nor one
//! that hangs; this does.
//!
//! It runs on a thread of the core's own, never holding the GIL and never in the way of the
//! sampler, the watchdog or the checks. Each GPU's run is on a worker thread of its own,
//! bounded by `gpu_canary_timeout_seconds`: a run past it is `canary_hang` (fatal), and the
//! worker, stuck in the driver, is left behind as the NVML watchdog leaves a stuck call.
//!
//! A context is created for each run and destroyed after it, so the canary holds no GPU
//! memory between runs (a CUDA context costs hundreds of MiB on a large GPU, which belongs to
//! the model); the cost of creating one is measured where a GPU is lent (benches/gpu_check.py).
//!
//! | outcome | rule | severity |
//! |---|---|---|
//! | an answer differs from the CPU's | `canary_mismatch` | fatal |
//! | not done within the timeout | `canary_hang` | fatal |
//! | a CUDA error of broken hardware or driver (ECC, launch failure, illegal address, …) | `canary_error` | fatal |
//! | out of memory, device busy or exclusive, not permitted, no CUDA, PTX not supported | `canary_unavailable` | warning |

pub mod driver;
#[cfg(test)]
mod exactness_tests;
/// The fake driver's kernels (rust/fake-cuda), compiled here only to be compared with
/// `known_answer`'s.
#[cfg(test)]
#[path = "../fake-cuda/src/kernels.rs"]
mod fake_kernels;
pub mod known_answer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::door::Door;
use crate::events::EventQueue;
use crate::nvml::{Found, Replacer};
use crate::policy::{Finding, Severity};
use crate::verdict::{Event, Reason};
use crate::worker::{lock, Worker};
use driver::Cuda;
use known_answer::Failure;

/// The driver loaded when `cuda_library` is unset: found by the dynamic loader.
pub const DEFAULT_LIBRARY: &str = "libcuda.so.1";

/// CUDA errors that mean broken hardware or a broken driver: fatal (G7).
const FATAL_ERRORS: [u32; 12] = [
    214, // ECC_UNCORRECTABLE
    220, // NVLINK_UNCORRECTABLE
    700, // ILLEGAL_ADDRESS
    702, // LAUNCH_TIMEOUT
    714, // HARDWARE_STACK_ERROR
    715, // ILLEGAL_INSTRUCTION
    716, // MISALIGNED_ADDRESS
    717, // INVALID_ADDRESS_SPACE
    718, // INVALID_PC
    719, // LAUNCH_FAILED
    101, // INVALID_DEVICE: the device went away
    999, // UNKNOWN
];

/// What the canary needs to know.
#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// None: only after failed checks and when asked.
    pub period: Option<Duration>,
    pub timeout: Duration,
    pub library: String,
}

/// A watched GPU as the canary finds it among CUDA's devices.
#[derive(Debug, Clone)]
pub struct Target {
    /// NVML's index and UUID of the GPU (G5), which findings name.
    pub gpu: u32,
    pub uuid: String,
    /// The `MIG-<uuid>` that chose it, if one did: CUDA shows a GPU in MIG mode only as its
    /// instances, each with the instance's UUID (when `CUDA_VISIBLE_DEVICES` names it), so
    /// that is the device to run on.
    pub mig: Option<String>,
}

/// One GPU's last run.
#[derive(Debug, Clone)]
pub struct GpuRun {
    pub gpu: u32,
    pub uuid: String,
    /// pass, mismatch, hang, error, unavailable or busy.
    pub outcome: &'static str,
    pub detail: String,
    pub seconds: f64,
    /// Seconds since runwarden started, when it ended.
    pub at: f64,
}

/// What `/status` and `/metrics` show of the canary.
#[derive(Debug, Clone, Default)]
pub struct CanaryState {
    /// None until the driver was tried; false once it could not be used.
    pub enabled: Option<bool>,
    pub detail: String,
    pub last: Vec<GpuRun>,
    pub runs: u64,
    /// Failed runs by outcome.
    pub failures: BTreeMap<&'static str, u64>,
    pub seconds_total: f64,
}

struct Shared {
    settings: CanarySettings,
    events: Arc<EventQueue>,
    replace: Replacer,
    /// The GPUs to test, as G5 chose them.
    watched: Box<dyn Fn() -> Vec<Target> + Send + Sync>,
    /// Q1: with exclusive checks, a run holds the door like a check, bounded like one.
    window: Option<(Arc<Door>, Duration)>,
    state: Mutex<CanaryState>,
    asked: AtomicU64,
    wake: Condvar,
    wake_lock: Mutex<()>,
    stop: AtomicBool,
    started: Instant,
}

pub struct Canary {
    shared: Arc<Shared>,
    thread: Mutex<Option<Worker>>,
}

impl Canary {
    pub fn new(
        settings: CanarySettings,
        events: Arc<EventQueue>,
        replace: Replacer,
        watched: Box<dyn Fn() -> Vec<Target> + Send + Sync>,
        window: Option<(Arc<Door>, Duration)>,
    ) -> Canary {
        Canary {
            shared: Arc::new(Shared {
                settings,
                events,
                replace,
                watched,
                window,
                state: Mutex::new(CanaryState::default()),
                asked: AtomicU64::new(0),
                wake: Condvar::new(),
                wake_lock: Mutex::new(()),
                stop: AtomicBool::new(false),
                started: Instant::now(),
            }),
            thread: Mutex::new(None),
        }
    }

    pub fn start(&self) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let worker = Worker::spawn("canary", move || shared.keep())?;
        *lock(&self.thread) = Some(worker);
        Ok(())
    }

    /// Run as soon as the thread is free (a failed check, `POST /canary`): false if the
    /// canary is off for good (no CUDA).
    pub fn ask(&self) -> bool {
        if lock(&self.shared.state).enabled == Some(false) {
            return false;
        }
        self.shared.asked.fetch_add(1, Ordering::Relaxed);
        let _guard = lock(&self.shared.wake_lock);
        self.shared.wake.notify_all();
        true
    }

    pub fn state(&self) -> CanaryState {
        lock(&self.shared.state).clone()
    }

    pub fn stop(&self, timeout: Duration) -> bool {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = lock(&self.shared.wake_lock);
            self.shared.wake.notify_all();
        }
        lock(&self.thread)
            .take()
            .is_none_or(|w| w.join_within(timeout))
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

impl Shared {
    fn keep(self: Arc<Self>) {
        let cuda = match Cuda::load(&self.settings.library)
            .map_err(|e| e.to_string())
            .and_then(|cuda| {
                cuda.initialise().map_err(|e| e.to_string())?;
                Ok(cuda)
            }) {
            Ok(cuda) => Arc::new(cuda),
            Err(why) => {
                let detail = format!(
                    "the compute canary is off: could not use CUDA from {}: {why}",
                    self.settings.library
                );
                {
                    let mut state = lock(&self.state);
                    state.enabled = Some(false);
                    state.detail.clone_from(&detail);
                }
                self.say("info", detail);
                return;
            }
        };
        let detail = format!(
            "the compute canary tests the watched GPUs through {} ({})",
            self.settings.library,
            self.settings
                .period
                .map_or("after failed checks and when asked".to_owned(), |p| {
                    format!("every {}s", crate::scheduler::trim_float(p.as_secs_f64()))
                })
        );
        {
            let mut state = lock(&self.state);
            state.enabled = Some(true);
            state.detail.clone_from(&detail);
        }
        self.say("info", detail);
        let mut seen_asks = self.asked.load(Ordering::Relaxed);
        let mut next = self.settings.period.map(|p| Instant::now() + p);
        let mut seed: u32 = 0x5EED_0000;
        while !self.stop.load(Ordering::Acquire) {
            let asks = self.asked.load(Ordering::Relaxed);
            let due = next.is_some_and(|t| Instant::now() >= t);
            if asks == seen_asks && !due {
                let guard = lock(&self.wake_lock);
                // Asked (or stopped) between the look above and now: no wait. `ask` counts
                // before it takes this lock, so nothing is missed once it is held.
                if self.asked.load(Ordering::Relaxed) != seen_asks
                    || self.stop.load(Ordering::Acquire)
                {
                    continue;
                }
                let wait = next.map_or(Duration::from_secs(3600), |t| {
                    t.saturating_duration_since(Instant::now())
                });
                let _ = self
                    .wake
                    .wait_timeout(guard, wait.max(Duration::from_millis(1)));
                continue;
            }
            seen_asks = asks;
            next = self.settings.period.map(|p| Instant::now() + p);
            seed = seed.wrapping_add(1);
            if !self.round(&cuda, seed) {
                return; // a worker is stuck in the driver: no more runs
            }
        }
    }

    /// One run on every watched GPU; false if one hung.
    fn round(&self, cuda: &Arc<Cuda>, seed: u32) -> bool {
        let _window = match &self.window {
            Some((door, bound)) => match hold(door, *bound) {
                Some(window) => Some(window),
                None => {
                    self.record(
                        None,
                        "busy",
                        "the runner was not idle in time: skipped".into(),
                        0.0,
                    );
                    return true;
                }
            },
            None => None,
        };
        let devices = match cuda.devices() {
            Ok(devices) => devices,
            Err(e) => {
                // No GPU to name: said in the log, counted, never a verdict.
                self.say(
                    "warning",
                    format!("the compute canary could not list CUDA devices: {e}"),
                );
                self.record(None, "unavailable", e.to_string(), 0.0);
                return true;
            }
        };
        for Target { gpu, uuid, mig } in (self.watched)() {
            let wanted = uuid_bytes(mig.as_deref().unwrap_or(&uuid));
            let Some(&(device, _)) = devices.iter().find(|(_, u)| Some(*u) == wanted) else {
                let detail = match &mig {
                    Some(mig) if wanted.is_some() => format!(
                        "MIG instance {mig} is not visible to CUDA in runwarden's process: \
                         start runwarden with CUDA_VISIBLE_DEVICES={mig}"
                    ),
                    Some(mig) => format!(
                        "{mig} cannot be found among CUDA's devices: name the MIG instance by \
                         the MIG-<uuid> that `nvidia-smi -L` shows"
                    ),
                    None => "not visible to CUDA in runwarden's process (CUDA_VISIBLE_DEVICES?)"
                        .to_owned(),
                };
                self.unavailable(gpu, &uuid, detail, 0.0);
                continue;
            };
            let (tx, rx) = mpsc::channel();
            let worker_cuda = Arc::clone(cuda);
            let started = Instant::now();
            let spawned = std::thread::Builder::new()
                .name(format!("canary-gpu{gpu}"))
                .spawn(move || {
                    let _ = tx.send(known_answer::run(&worker_cuda, device, seed));
                });
            if let Err(e) = spawned {
                self.record(
                    Some((gpu, &uuid)),
                    "unavailable",
                    format!("no thread: {e}"),
                    0.0,
                );
                continue;
            }
            match rx.recv_timeout(self.settings.timeout) {
                Ok(result) => self.judge(gpu, &uuid, result, started.elapsed()),
                Err(_) => {
                    let detail = format!(
                        "the known-answer test did not finish within {}s",
                        crate::scheduler::trim_float(self.settings.timeout.as_secs_f64())
                    );
                    self.finding(gpu, &uuid, "canary_hang", Severity::Fatal, detail.clone());
                    self.record(
                        Some((gpu, &uuid)),
                        "hang",
                        detail,
                        started.elapsed().as_secs_f64(),
                    );
                    return false;
                }
            }
        }
        true
    }

    fn judge(&self, gpu: u32, uuid: &str, result: Result<(), Failure>, took: Duration) {
        let seconds = took.as_secs_f64();
        let place = (!uuid.is_empty()).then_some((gpu, uuid));
        match result {
            Ok(()) => self.record(place, "pass", String::new(), seconds),
            Err(Failure::Mismatch(detail)) => {
                let detail = format!("silent data corruption: {detail}");
                self.finding(
                    gpu,
                    uuid,
                    "canary_mismatch",
                    Severity::Fatal,
                    detail.clone(),
                );
                self.record(place, "mismatch", detail, seconds);
            }
            Err(Failure::Cuda(error)) if FATAL_ERRORS.contains(&error.code) => {
                let detail = error.to_string();
                self.finding(gpu, uuid, "canary_error", Severity::Fatal, detail.clone());
                self.record(place, "error", detail, seconds);
            }
            Err(Failure::Cuda(error)) => {
                let detail = format!("{error} (the app may be using the GPU as it should)");
                self.unavailable(gpu, uuid, detail, seconds);
            }
        }
    }

    /// `canary_unavailable`: a warning said when it begins (G3), not at every period it
    /// lasts; every run is recorded.
    fn unavailable(&self, gpu: u32, uuid: &str, detail: String, seconds: f64) {
        let already = lock(&self.state)
            .last
            .iter()
            .any(|r| r.gpu == gpu && r.outcome == "unavailable");
        if !already {
            self.finding(
                gpu,
                uuid,
                "canary_unavailable",
                Severity::Warning,
                detail.clone(),
            );
        }
        let place = (!uuid.is_empty()).then_some((gpu, uuid));
        self.record(place, "unavailable", detail, seconds);
    }

    fn record(
        &self,
        place: Option<(u32, &str)>,
        outcome: &'static str,
        detail: String,
        seconds: f64,
    ) {
        let at = self.started.elapsed().as_secs_f64();
        let mut state = lock(&self.state);
        state.runs += 1;
        state.seconds_total += seconds;
        if outcome != "pass" {
            *state.failures.entry(outcome).or_insert(0) += 1;
        }
        if let Some((gpu, uuid)) = place {
            state.last.retain(|r| r.gpu != gpu);
            state.last.push(GpuRun {
                gpu,
                uuid: uuid.to_owned(),
                outcome,
                detail,
                seconds,
                at,
            });
            state.last.sort_by_key(|r| r.gpu);
        }
    }

    fn say(&self, level: &'static str, message: String) {
        self.events.push(Event::Log(crate::verdict::LogLine {
            level,
            logger: "runwarden.canary",
            message,
        }));
    }

    fn finding(
        &self,
        gpu: u32,
        uuid: &str,
        rule: &'static str,
        severity: Severity,
        detail: String,
    ) {
        let finding = Finding {
            gpu: Some(gpu),
            uuid: (!uuid.is_empty()).then(|| uuid.to_owned()),
            rule,
            severity,
            detail,
            xid: None,
        };
        let place = match &finding.uuid {
            Some(uuid) => format!(" on GPU {gpu} ({uuid})"),
            None => format!(" on GPU {gpu}"),
        };
        let line = format!("{rule}{place}: {}", finding.detail);
        self.events.push(Event::GpuFinding(Found {
            finding,
            age: self.started.elapsed(),
        }));
        if severity == Severity::Fatal {
            (self.replace)(Reason::GpuFault, line);
        }
    }
}

/// Q1: the door to itself for a run, from a thread with no runtime of its own.
fn hold(door: &Arc<Door>, bound: Duration) -> Option<crate::door::Window> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()?;
    runtime.block_on(door.exclusive(bound)).ok()
}

/// NVML's "GPU-xxxxxxxx-xxxx-…" or "MIG-xxxxxxxx-xxxx-…" as CUDA's 16 bytes; None for
/// anything else (the old "MIG-GPU-…/gi/ci" form included, which CUDA's UUIDs do not carry).
fn uuid_bytes(uuid: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = uuid
        .strip_prefix("GPU-")
        .or_else(|| uuid.strip_prefix("MIG-"))?
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_nvml_uuid_is_cudas_16_bytes() {
        let bytes = uuid_bytes("GPU-00000000-0000-4000-8000-00000000000a").unwrap();
        assert_eq!(bytes[6], 0x40);
        assert_eq!(bytes[15], 0x0a);
        assert_eq!(uuid_bytes("MIG-1234"), None);
        let mig = uuid_bytes("MIG-c6d4f1ef-42e4-5de3-91c7-45d71585b8ae").unwrap();
        assert_eq!((mig[0], mig[15]), (0xc6, 0xae));
        assert_eq!(
            uuid_bytes("MIG-GPU-00000000-0000-4000-8000-00000000000a/1/0"),
            None
        );
    }
}
