//! GPU monitoring (SPEC G): a sampler thread, an XID event thread and a watchdog thread,
//! around the pure policy in `policy.rs`. The driver is loaded at run time; without it
//! monitoring is off, said once, and everything else works.

pub mod read;
pub mod sample;
pub mod select;
pub mod watchdog;
pub mod xid;

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;

use crate::error::{CoreError, Result};
use crate::events::EventQueue;
use crate::policy::{Finding, Policy, Severity};
pub use crate::settings::GpuSettings;
use crate::verdict::{Event, Reason};
use crate::worker::{lock, Worker};
use sample::GpuSample;
use watchdog::{Sighting, Watch};

/// Findings kept for `/status`.
const FINDINGS_KEPT: usize = 100;

/// A finding with the monitor's clock time.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub finding: Finding,
    pub age: Duration,
}

/// What `/status` shows of the GPUs.
#[derive(Debug, Clone, Default)]
pub struct MonitorState {
    /// `None` until the driver was tried.
    pub enabled: Option<bool>,
    pub detail: String,
    pub driver_version: Option<String>,
    pub gpu_count: Option<u32>,
    pub samples: Vec<GpuSample>,
    pub sample_cost: Option<Duration>,
    pub findings: VecDeque<Found>,
    pub active_warnings: Vec<(u32, &'static str, Duration)>,
    /// The GPUs watched (G5), with the selector that chose each and its XID/ECC events.
    pub watched: Vec<WatchedGpu>,
    /// Selectors that matched no GPU, each with why.
    pub missing: Vec<(String, String)>,
}

/// One watched GPU, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct WatchedGpu {
    pub index: u32,
    pub uuid: Option<String>,
    pub selector: String,
    /// Which events are watched on it: "xid, double-bit ecc", "none: …", or "pending".
    pub events: String,
}

/// Replace the runner; false if it already is being replaced.
pub type Replacer = Arc<dyn Fn(Reason, String) -> bool + Send + Sync>;

struct Shared {
    settings: GpuSettings,
    base: Instant,
    policy: Mutex<Policy>,
    state: Mutex<MonitorState>,
    events: Arc<EventQueue>,
    replace: Replacer,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    wake: Condvar,
    watches: Mutex<Vec<Arc<Watch>>>,
    threads: Mutex<Vec<Worker>>,
    /// The thread the watchdog found stuck in the driver: abandoned, never waited for.
    stuck: Mutex<Option<&'static str>>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.base.elapsed()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleep up to `wait`, waking at once on stop. Returns false when stopping.
    fn pause(&self, wait: Duration) -> bool {
        let guard = lock(&self.stop_lock);
        if self.stopping() {
            return false;
        }
        let _unused = self.wake.wait_timeout(guard, wait);
        !self.stopping()
    }

    fn watch(&self, thread: &'static str) -> Arc<Watch> {
        let watch = Arc::new(Watch::new(thread));
        lock(&self.watches).push(Arc::clone(&watch));
        watch
    }

    /// Start a named thread; `name` is also its `Watch`'s name.
    fn spawn(
        self: &Arc<Self>,
        name: &'static str,
        body: impl FnOnce(Arc<Shared>) + Send + 'static,
    ) {
        let shared = Arc::clone(self);
        match Worker::spawn(name, move || body(shared)) {
            Ok(worker) => lock(&self.threads).push(worker),
            Err(error) => self.set_enabled(false, format!("could not start {name}: {error}")),
        }
    }

    fn set_enabled(&self, enabled: bool, detail: String) {
        {
            let mut state = lock(&self.state);
            state.enabled = Some(enabled);
            state.detail.clone_from(&detail);
        }
        self.events.push(Event::GpuMonitoring { enabled, detail });
    }

    /// Record, tell Python, and replace the runner on a fatal finding.
    fn report(&self, finding: Finding) {
        debug_assert!(crate::policy::known_rule(finding.rule), "{}", finding.rule);
        let found = Found {
            finding,
            age: self.now(),
        };
        {
            let mut state = lock(&self.state);
            if state.findings.len() == FINDINGS_KEPT {
                state.findings.pop_front();
            }
            state.findings.push_back(found.clone());
        }
        let fatal = found.finding.severity == Severity::Fatal;
        let detail = describe(&found.finding);
        self.events.push(Event::GpuFinding(found));
        if fatal {
            (self.replace)(Reason::GpuFault, detail);
        }
    }

    fn run_sampler(self: &Arc<Self>) {
        let watch = self.watch("sampler");
        let library = self.settings.library().to_owned();
        let init = watch.call("nvmlInit_v2", || {
            Nvml::builder().lib_path(OsStr::new(&library)).init()
        });
        let nvml = match init {
            Ok(nvml) => Arc::new(nvml),
            Err(error) => {
                return self.unavailable(format!("could not load NVML from {library}: {error}"))
            }
        };
        let count = match watch.call("nvmlDeviceGetCount_v2", || nvml.device_count()) {
            Ok(count) => count,
            Err(error) => return self.unavailable(format!("nvmlDeviceGetCount: {error}")),
        };
        let driver = watch
            .call("nvmlSystemGetDriverVersion", || nvml.sys_driver_version())
            .ok();
        let selection = select::resolve(&nvml, count, self.settings.gpus.as_deref(), &watch);
        let mut gpus: Vec<read::Gpu<'_>> = selection
            .chosen
            .iter()
            .map(|c| read::Gpu::find(&nvml, c.index, &watch))
            .collect();
        let indices: Vec<u32> = selection.chosen.iter().map(|c| c.index).collect();
        {
            let mut state = lock(&self.state);
            state.driver_version.clone_from(&driver);
            state.gpu_count = Some(count);
            state.missing.clone_from(&selection.missing);
            state.watched = selection
                .chosen
                .iter()
                .map(|c| WatchedGpu {
                    index: c.index,
                    uuid: c.uuid.clone(),
                    selector: c.selector.clone(),
                    events: "pending".into(),
                })
                .collect();
        }
        let missing = describe_missing(&selection.missing);
        if !missing.is_empty() && self.settings.gpu_required {
            // G6: fewer GPUs than asked for, with --gpu-required: stop before the app starts.
            self.report(Finding {
                gpu: None,
                uuid: None,
                rule: "gpu_missing",
                severity: Severity::Fatal,
                detail: missing.clone(),
                xid: None,
            });
        }
        let shown: Vec<String> = indices.iter().map(u32::to_string).collect();
        self.set_enabled(
            true,
            format!(
                "watching {} of {count} GPU(s) [{}] through {library} (driver {}){}",
                indices.len(),
                shown.join(", "),
                driver.as_deref().unwrap_or("unknown"),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; not found: {missing}")
                },
            ),
        );
        let events_nvml = Arc::clone(&nvml);
        let watched = indices.clone();
        self.spawn("events", move |shared| {
            shared.run_events(&events_nvml, &watched)
        });
        let period = Duration::from_secs_f64(self.settings.gpu_sample_seconds);
        loop {
            let began = Instant::now();
            self.sample_all(&nvml, &mut gpus, count, &watch);
            let spent = began.elapsed();
            if !self.pause(period.saturating_sub(spent)) {
                return;
            }
        }
    }

    /// No NVML: monitoring is off, said once; with --gpu-required, a fault (G6).
    fn unavailable(&self, why: String) {
        if self.settings.gpu_required {
            self.report(Finding {
                gpu: None,
                uuid: None,
                rule: "nvml_unavailable",
                severity: Severity::Fatal,
                detail: why.clone(),
                xid: None,
            });
        }
        self.set_enabled(false, format!("GPU monitoring is off: {why}"));
    }

    fn sample_all<'nvml>(
        &self,
        nvml: &'nvml Nvml,
        gpus: &mut [read::Gpu<'nvml>],
        node_count: u32,
        watch: &Watch,
    ) {
        let began = Instant::now();
        let count = watch
            .call("nvmlDeviceGetCount_v2", || nvml.device_count())
            .map(|now| visible(nvml, gpus, node_count, now, watch));
        let samples: Vec<GpuSample> = gpus.iter_mut().map(|gpu| gpu.read(nvml, watch)).collect();
        let cost = began.elapsed();
        let now = self.now();
        let findings = {
            let mut policy = lock(&self.policy);
            let mut findings: Vec<Finding> = Vec::new();
            match &count {
                Ok(n) => findings.extend(policy.judge_count(*n)),
                Err(error) => findings.extend(policy.judge_failure(
                    None,
                    "nvmlDeviceGetCount_v2",
                    &read::failure(error),
                )),
            }
            for sample in &samples {
                findings.extend(policy.judge_sample(now, sample));
            }
            let mut state = lock(&self.state);
            state.active_warnings = policy.active_warnings();
            state.samples.clone_from(&samples);
            state.sample_cost = Some(cost);
            findings
        };
        // Findings first: a fatal one's verdict is queued before the sample that shows it,
        // so whoever waits for the first sample (G6's gate) finds the verdict already given.
        for finding in findings {
            self.report(finding);
        }
        self.events.push(Event::GpuSamples { samples, cost });
    }

    fn run_events(self: &Arc<Self>, nvml: &Nvml, watched: &[u32]) {
        let watch = self.watch("events");
        let registered = xid::register(nvml, watched, &watch);
        if let Ok((_, each)) = &registered {
            let mut state = lock(&self.state);
            for gpu in &mut state.watched {
                if let Some((_, events)) = each.iter().find(|(index, _)| *index == gpu.index) {
                    gpu.events.clone_from(events);
                }
            }
        }
        let set = match registered {
            Ok((set, _)) => set,
            Err(error) => {
                self.report(Finding {
                    gpu: None,
                    uuid: None,
                    rule: "events_unavailable",
                    severity: Severity::Warning,
                    detail: format!("XID events are not watched: {error}"),
                    xid: None,
                });
                return;
            }
        };
        while !self.stopping() {
            let finding = match xid::wait(&set, &watch) {
                xid::Heard::Nothing => continue,
                xid::Heard::Xid { gpu, xid } => lock(&self.policy).judge_xid(gpu, xid),
                xid::Heard::DoubleBitEcc { gpu } => Some(Finding {
                    gpu,
                    uuid: None,
                    rule: "uncorrectable_ecc",
                    severity: Severity::Fatal,
                    detail: "double-bit ECC error event".into(),
                    xid: None,
                }),
                xid::Heard::Failed(failure) => {
                    // NVML's event wait does not say which GPU is gone: ask each.
                    let gone = lost_gpu(nvml, watched, &watch);
                    let policy = lock(&self.policy);
                    let finding = policy
                        .judge_failure(gone, "nvmlEventSetWait_v2", &failure)
                        .unwrap_or(Finding {
                            gpu: None,
                            uuid: None,
                            rule: "event_wait_failed",
                            severity: Severity::Fatal,
                            detail: format!("nvmlEventSetWait_v2: {failure}"),
                            xid: None,
                        });
                    drop(policy);
                    self.report(finding);
                    return;
                }
            };
            if let Some(finding) = finding {
                self.report(finding);
            }
        }
    }

    fn run_watchdog(self: &Arc<Self>) {
        let limit = Duration::from_secs_f64(self.settings.nvml_watchdog_seconds);
        // A verdict comes at most one tick late; SPEC allows half a second.
        let tick = (limit / 20).clamp(Duration::from_millis(10), Duration::from_millis(500));
        // One sighting per watch; watches are only ever added, so indices line up.
        let mut sightings: Vec<Sighting> = Vec::new();
        while self.pause(tick) {
            let now = Instant::now();
            let watches = lock(&self.watches);
            sightings.resize_with(watches.len(), Sighting::default);
            let overdue = watches
                .iter()
                .zip(&mut sightings)
                .find_map(|(w, sighting)| {
                    sighting
                        .overdue(w, limit, now)
                        .map(|(call, _)| (w.thread(), call))
                });
            drop(watches);
            if let Some((thread, call)) = overdue {
                *lock(&self.stuck) = Some(thread);
                self.report(Finding {
                    gpu: None,
                    uuid: None,
                    rule: "nvml_hung",
                    severity: Severity::Fatal,
                    detail: format!(
                        "{call} did not return within {}s (on the {thread} thread)",
                        crate::scheduler::trim_float(self.settings.nvml_watchdog_seconds)
                    ),
                    xid: None,
                });
                // The stuck thread is abandoned; the verdict is given once.
                return;
            }
        }
    }
}

/// "GPU-1234 (no GPU has this UUID); 7 (index 7, but NVML sees 4 GPU(s))".
fn describe_missing(missing: &[(String, String)]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|(s, why)| format!("{s} ({why})"))
        .collect();
    parts.join("; ")
}

/// How many watched GPUs NVML still sees (G2 `gpu_count_dropped`, over the watched set):
/// all of them while the node's count holds; once it drops, those still found by UUID.
fn visible(nvml: &Nvml, gpus: &[read::Gpu<'_>], node_count: u32, now: u32, watch: &Watch) -> u32 {
    if now >= node_count {
        return gpus.len() as u32;
    }
    let found = gpus.iter().filter(|gpu| {
        gpu.uuid().is_none_or(|uuid| {
            watch
                .call("nvmlDeviceGetHandleByUUID", || nvml.device_by_uuid(uuid))
                .is_ok()
        })
    });
    found.count() as u32
}

/// The first watched GPU whose handle answers GPU lost or reset required, if any.
fn lost_gpu(nvml: &Nvml, watched: &[u32], watch: &Watch) -> Option<u32> {
    watched.iter().copied().find(|&index| {
        let answer = watch.call("nvmlDeviceGetUUID", || {
            nvml.device_by_index(index).and_then(|device| device.uuid())
        });
        match answer {
            Err(error) => !matches!(read::failure(&error), sample::NvmlFailure::Other(_)),
            Ok(_) => false,
        }
    })
}

fn describe(f: &Finding) -> String {
    let place = match (f.gpu, &f.uuid) {
        (Some(gpu), Some(uuid)) => format!(" on GPU {gpu} ({uuid})"),
        (Some(gpu), None) => format!(" on GPU {gpu}"),
        _ => String::new(),
    };
    format!("{}{place}: {}", f.rule, f.detail)
}

/// The GPU monitor: owns its threads and stops them within a bound (a thread stuck in
/// the driver is left behind, as the watchdog already reported it).
pub struct GpuMonitor {
    shared: Arc<Shared>,
}

impl GpuMonitor {
    pub fn new(settings: GpuSettings, events: Arc<EventQueue>, replace: Replacer) -> Result<Self> {
        let settings = settings.validate()?;
        Ok(GpuMonitor {
            shared: Arc::new(Shared {
                policy: Mutex::new(Policy::new(settings.clone())),
                settings,
                base: Instant::now(),
                state: Mutex::new(MonitorState::default()),
                events,
                replace,
                stop: AtomicBool::new(false),
                stop_lock: Mutex::new(()),
                wake: Condvar::new(),
                watches: Mutex::new(Vec::new()),
                threads: Mutex::new(Vec::new()),
                stuck: Mutex::new(None),
            }),
        })
    }

    pub fn start(&self) -> Result<()> {
        if !lock(&self.shared.threads).is_empty() {
            return Err(CoreError::State(
                "the GPU monitor was already started".into(),
            ));
        }
        self.shared
            .spawn("watchdog", |shared| shared.run_watchdog());
        self.shared.spawn("sampler", |shared| shared.run_sampler());
        Ok(())
    }

    pub fn settings(&self) -> &GpuSettings {
        &self.shared.settings
    }

    pub fn state(&self) -> MonitorState {
        lock(&self.shared.state).clone()
    }

    /// Stop every thread, waiting at most `timeout` in all. False if one was left behind:
    /// a thread stuck in the driver is not waited for (the watchdog reported it already).
    pub fn stop(&self, timeout: Duration) -> bool {
        {
            let _guard = lock(&self.shared.stop_lock);
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        let deadline = Instant::now() + timeout;
        let mut all = true;
        // The sampler may add the event thread while we wait: take until none is left.
        loop {
            let taken: Vec<Worker> = lock(&self.shared.threads).drain(..).collect();
            if taken.is_empty() {
                return all;
            }
            for worker in taken {
                if *lock(&self.shared.stuck) == Some(worker.name) {
                    all = false;
                    continue;
                }
                all &= worker.join_within(deadline.saturating_duration_since(Instant::now()));
            }
        }
    }
}

impl Drop for GpuMonitor {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
