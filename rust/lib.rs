//! Python bindings of the runwarden core. Only bindings live here: the logic is in the
//! modules below, which know nothing of Python and are tested with `cargo test`.

mod allocator;
pub mod canary;
pub mod door;
pub mod embedded;
mod embedded_bindings;
mod embedded_call_bindings;
pub mod error;
pub mod events;
pub mod front;
mod gpu_bindings;
mod health_bindings;
mod json_bindings;
pub mod lifecycle;
pub mod metrics;
pub mod nvml;
pub mod policy;
pub mod probe;
pub mod proxy;
mod proxy_bindings;
pub mod runner;
pub mod scheduler;
pub mod setting;
mod setting_bindings;
pub mod settings;
pub mod status;
pub mod traffic;
mod vectorcall_bindings;
pub mod verdict;
pub mod worker;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use embedded_bindings::{PyAnswer, PyAppCheck, PyEntered, PyFront, PyTicket, PyWaiting};
use embedded_call_bindings::PyAsgiEntry;
use error::CoreError;
use events::EventQueue;
use gpu_bindings::{PyGpuFinding, PyGpuMonitoring, PyGpuSamples, PyGpuSettings};
use health_bindings::{PyCheckOutcome, PyHealthSettings, PyVerdict};
use nvml::GpuMonitor;
use proxy::DataPlane;
use proxy_bindings::{PyAccessLine, PyDrained, PyLogLine, PyPortsClosed, PyProxySettings};
use runner::Runner;
use scheduler::TriggerAnswer;
use settings::{AppProtocol, GpuMetrics};
use verdict::{Event, Reason, Trigger};

create_exception!(
    runwarden._core,
    SettingsError,
    PyValueError,
    "A setting is invalid; the message names it, says what is allowed and what was given, \
     and `setting` holds its name."
);

/// `Name(key=value, ...)` from a settings dict, so a repr always shows every setting.
pub(crate) fn repr_of(name: &str, settings: &Bound<'_, PyDict>) -> PyResult<String> {
    let parts: PyResult<Vec<String>> = settings
        .iter()
        .map(|(k, v)| Ok(format!("{}={}", k.str()?, v.repr()?)))
        .collect();
    Ok(format!("{name}({})", parts?.join(", ")))
}

pub(crate) fn to_py(error: CoreError) -> PyErr {
    match error {
        CoreError::State(_) => return PyRuntimeError::new_err(error.to_string()),
        CoreError::Bind(_) => return PyOSError::new_err(error.to_string()),
        _ => {}
    }
    let err = SettingsError::new_err(error.to_string());
    // Errors as data: the setting's name, never parsed out of the message.
    Python::attach(|py| {
        let _ = err.value(py).setattr("setting", error.setting());
    });
    err
}

fn verdict_to_py(
    py: Python<'_>,
    verdict: Option<verdict::Verdict>,
) -> PyResult<Option<Py<PyVerdict>>> {
    verdict
        .map(|inner| Py::new(py, PyVerdict { inner }))
        .transpose()
}

fn event_to_py(py: Python<'_>, event: Event) -> PyResult<Py<PyAny>> {
    Ok(match event {
        Event::Check(inner) => Py::new(py, PyCheckOutcome { inner })?.into_any(),
        Event::Verdict(inner) => Py::new(py, PyVerdict { inner })?.into_any(),
        Event::GpuSamples { samples, cost } => Py::new(
            py,
            PyGpuSamples {
                samples,
                cost_seconds: cost.as_secs_f64(),
            },
        )?
        .into_any(),
        Event::GpuFinding(inner) => Py::new(py, PyGpuFinding { inner })?.into_any(),
        Event::GpuMonitoring { enabled, detail } => {
            Py::new(py, PyGpuMonitoring { enabled, detail })?.into_any()
        }
        Event::Log(inner) => Py::new(py, PyLogLine { inner })?.into_any(),
        Event::Access(inner) => Py::new(py, PyAccessLine { inner })?.into_any(),
        Event::Drained(inner) => Py::new(py, PyDrained { inner })?.into_any(),
        Event::Closed { cut } => Py::new(py, PyPortsClosed { cut })?.into_any(),
        Event::AppCheck { call } => Py::new(py, PyAppCheck { call })?.into_any(),
        Event::Entered { call } => Py::new(py, PyEntered { call })?.into_any(),
    })
}

/// The core: the runner's threads, GPU monitoring's, and the data plane's.
#[pyclass(frozen, module = "runwarden._core", name = "Core")]
pub struct PyCore {
    started: Instant,
    events: Arc<EventQueue>,
    runner: Runner,
    gpu: Option<Arc<GpuMonitor>>,
    canary: Option<Arc<canary::Canary>>,
    gpu_metrics: GpuMetrics,
    app_url: String,
    python: String,
    proxy: Option<settings::ProxySettings>,
    plane: OnceLock<DataPlane>,
    info: Arc<status::Info>,
    /// Embedded (SPEC E): the checks the app's loop answers, and the front its requests
    /// enter by (once started).
    app_checks: Option<Arc<embedded::check::AppChecks>>,
    front: OnceLock<Arc<embedded::Front>>,
}

impl PyCore {
    /// Bind both ports, wire the metrics and `/status`, and serve.
    fn start_plane(&self, settings: settings::ProxySettings) -> Result<(), CoreError> {
        let log = proxy::log::Log::new(Arc::clone(&self.events));
        let trusted = front::Trusted::new(&settings.check_trusted_sources);
        let plane = DataPlane::bind(settings, log, self.app_checks.is_none())?;
        let monitor = self.gpu.clone();
        let driver_version =
            Box::new(move || monitor.as_ref().and_then(|m| m.state().driver_version));
        let series = Arc::new(metrics::GpuSeries::new(self.gpu_metrics, driver_version));
        let ports = plane.proxy.iter().chain([&plane.admin]).cloned().collect();
        let live = metrics::Live::new(self.runner.handle(), ports, self.canary.clone());
        let metrics = metrics::Metrics::new(live, series, &self.python);
        let observer = Arc::clone(&metrics);
        let canary = self.canary.clone();
        self.events.observe(move |event| {
            observer.observe(event);
            // G7: after any failed check, the canary runs too.
            if let (Event::Check(outcome), Some(canary)) = (event, &canary) {
                if !outcome.report.passed() {
                    canary.ask();
                }
            }
        });
        let (started, runner, gpu, port, info, canary) = (
            self.started,
            self.runner.handle(),
            self.gpu.clone(),
            plane.proxy.clone(),
            Arc::clone(&self.info),
            self.canary.clone(),
        );
        let status = Box::new(move || {
            status::document(&status::Parts {
                started,
                runner: &runner,
                gpu: gpu.as_ref().map(|g| g.state()),
                canary: canary.as_ref().map(|c| c.state()),
                proxy: port.as_deref(),
                info: &info,
            })
        });
        let canary = self.canary.clone();
        plane.start(proxy::Wiring {
            app_url: self.app_url.clone(),
            runner: self.runner.handle(),
            metrics: Arc::clone(&metrics),
            status,
            canary: Box::new(move || canary.as_ref().is_some_and(|c| c.ask())),
        })?;
        if self.app_checks.is_some() {
            let runtime = plane.runtime().expect("the plane was started");
            let front = embedded::Front::new(
                self.runner.handle(),
                trusted,
                metrics,
                runtime,
                Arc::clone(&self.events),
            );
            let _ = self.front.set(Arc::new(front));
        }
        let _ = self.plane.set(plane);
        Ok(())
    }
}

#[pymethods]
impl PyCore {
    #[new]
    #[pyo3(signature = (health, app_url, gpu = None, proxy = None, embedded = false))]
    fn new(
        py: Python<'_>,
        health: &Bound<'_, PyHealthSettings>,
        app_url: &str,
        gpu: Option<&Bound<'_, PyGpuSettings>>,
        proxy: Option<&Bound<'_, PyProxySettings>>,
        embedded: bool,
    ) -> PyResult<Self> {
        let started = Instant::now();
        let health = health.get().inner.clone();
        let events = EventQueue::new().map(Arc::new).map_err(|e| {
            PyRuntimeError::new_err(format!("could not create the event socket: {e}"))
        })?;
        let proxy = proxy.map(|p| p.get().inner.clone());
        let protocol = proxy
            .as_ref()
            .map_or(AppProtocol::Http1, |p| p.app_protocol);
        let admission = match &proxy {
            Some(p) => runner::Admission {
                door: door::Door::new(match embedded {
                    true => embedded::door_limits(p),
                    false => proxy::door_limits(p),
                }),
                window_bound: p.drain_timeout(),
            },
            None => runner::Admission::default(),
        };
        let exclusive = health
            .exclusive()
            .then(|| (Arc::clone(&admission.door), admission.window_bound));
        // Embedded, checks are calls of the app's route on its own loop (E4).
        let app_checks = embedded
            .then(|| embedded::check::AppChecks::new(Arc::clone(&events), &health.health_path));
        let runner = match &app_checks {
            Some(checks) => Runner::with_probe(
                health,
                probe::Probe::InProcess(Arc::clone(checks)),
                Arc::clone(&events),
                admission,
            ),
            None => Runner::new(health, app_url, protocol, Arc::clone(&events), admission),
        }
        .map_err(to_py)?;
        let gpu_settings = gpu.map(|g| g.get().inner.clone());
        let gpu_metrics = gpu_settings
            .as_ref()
            .map_or(GpuMetrics::Off, |g| g.gpu_metrics);
        let canary_settings = gpu_settings.as_ref().and_then(|g| g.canary());
        let gpu = gpu_settings
            .map(|g| GpuMonitor::new(g, Arc::clone(&events), runner.drainer()).map(Arc::new))
            .transpose()
            .map_err(to_py)?;
        // G7: the canary tests the GPUs G5 chose, as the monitor found them.
        let canary = match (canary_settings, &gpu) {
            (Some(settings), Some(monitor)) => {
                let monitor = Arc::clone(monitor);
                let watched = Box::new(move || {
                    monitor
                        .state()
                        .watched
                        .iter()
                        .filter_map(|g| {
                            Some(canary::Target {
                                gpu: g.index,
                                uuid: g.uuid.clone()?,
                                mig: g.selector.starts_with("MIG-").then(|| g.selector.clone()),
                            })
                        })
                        .collect()
                });
                Some(Arc::new(canary::Canary::new(
                    settings,
                    Arc::clone(&events),
                    runner.drainer(),
                    watched,
                    exclusive,
                )))
            }
            _ => None,
        };
        let version = py.version_info();
        Ok(PyCore {
            started,
            events,
            runner,
            gpu,
            canary,
            gpu_metrics,
            app_url: app_url.to_owned(),
            python: format!("{}.{}.{}", version.major, version.minor, version.patch),
            proxy,
            plane: OnceLock::new(),
            info: Arc::default(),
            app_checks,
            front: OnceLock::new(),
        })
    }

    /// Bind both ports (OSError if one cannot be had: nothing else has started), then start
    /// every thread.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(settings) = self.proxy.clone() {
            if self.plane.get().is_some() {
                return Err(PyRuntimeError::new_err("the core was already started"));
            }
            py.detach(|| self.start_plane(settings)).map_err(to_py)?;
        }
        self.runner.start().map_err(to_py)?;
        if let Some(gpu) = &self.gpu {
            gpu.start().map_err(to_py)?;
        }
        if let Some(canary) = &self.canary {
            canary.start().map_err(|e| {
                PyRuntimeError::new_err(format!("could not start the canary's thread: {e}"))
            })?;
        }
        Ok(())
    }

    /// A section of `/status` that Python owns (`settings`, `app`, `gpu_selection`), as JSON.
    fn set_info(&self, key: &str, value: &str) -> PyResult<()> {
        let value = serde_json::from_str(value)
            .map_err(|e| PyValueError::new_err(format!("{key} is not JSON: {e}")))?;
        self.info.set(key, value);
        Ok(())
    }

    fn app_started(&self) {
        self.runner.restart_clock()
    }

    fn restart(&self) -> bool {
        self.runner.restart()
    }

    /// D2: a second stop signal: stop waiting for requests in flight.
    fn hurry(&self) {
        if let Some(plane) = self.plane.get() {
            plane.hurry();
        }
    }

    /// D6: close the proxy port once drained; `PortsClosed` follows.
    fn close_ports(&self) {
        match self.plane.get() {
            Some(plane) => plane.close(),
            None => self.events.push(Event::Closed { cut: 0 }),
        }
    }

    /// The client connections the proxy port may hold, and the app's permits.
    fn limits(&self) -> Option<(usize, usize)> {
        let plane = self.plane.get()?;
        plane
            .proxy
            .as_ref()
            .map(|port| (port.cap, plane.max_app_connections))
    }

    #[pyo3(signature = (timeout_seconds = 2.0))]
    fn stop(&self, py: Python<'_>, timeout_seconds: f64) -> PyResult<bool> {
        if !(timeout_seconds.is_finite() && timeout_seconds >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "timeout_seconds must be a finite number >= 0, got {timeout_seconds}"
            )));
        }
        let timeout = Duration::from_secs_f64(timeout_seconds);
        Ok(py.detach(|| {
            let plane_stopped = self.plane.get().is_none_or(|p| p.stop(timeout));
            let gpu_stopped = self.gpu.as_ref().is_none_or(|g| g.stop(timeout));
            let canary_stopped = self.canary.as_ref().is_none_or(|c| c.stop(timeout));
            self.runner.stop(timeout) && gpu_stopped && plane_stopped && canary_stopped
        }))
    }

    fn request_check(&self, py: Python<'_>, trigger: &str) -> PyResult<Py<PyAny>> {
        let trigger = match trigger {
            "gateway" => Trigger::Gateway,
            "extra" => Trigger::Extra,
            other => {
                return Err(PyValueError::new_err(format!(
                    "trigger must be 'gateway' or 'extra', got {other:?}"
                )))
            }
        };
        match self.runner.trigger(trigger) {
            TriggerAnswer::Pending(id) => Ok(id.into_pyobject(py)?.into_any().unbind()),
            TriggerAnswer::Latest(outcome) => {
                Ok(Py::new(py, PyCheckOutcome { inner: *outcome })?.into_any())
            }
        }
    }

    /// Embedded (E2): the front requests enter by; None before `start`, or for a proxy.
    fn front(&self, py: Python<'_>) -> PyResult<Option<Py<PyFront>>> {
        self.front
            .get()
            .map(|front| {
                PyFront::new(
                    py,
                    Arc::clone(front),
                    self.proxy.as_ref().map(|p| p.check_header.as_str()),
                )
            })
            .transpose()
    }

    /// Embedded (E4): the app's loop answers check `call` with its route's status, or why
    /// it could not call it. False if the check is no longer waited for.
    #[pyo3(signature = (call, status = None, error = None))]
    fn answer_check(&self, call: u64, status: Option<u16>, error: Option<String>) -> bool {
        let Some(checks) = &self.app_checks else {
            return false;
        };
        let answered = match (status, error) {
            (Some(status), None) => Ok(status),
            (_, error) => Err(error.unwrap_or_else(|| "no status".to_owned())),
        };
        checks.answer(call, answered)
    }

    /// Embedded: whether check `call` is still waited for (a loop that was blocked skips
    /// the checks that timed out meanwhile).
    fn check_wanted(&self, call: u64) -> bool {
        self.app_checks.as_ref().is_some_and(|c| c.wanted(call))
    }

    fn manual_check(&self) {
        self.runner.manual()
    }

    fn replace(
        &self,
        py: Python<'_>,
        reason: &str,
        detail: String,
    ) -> PyResult<Option<Py<PyVerdict>>> {
        let reason = Reason::parse(reason)
            .filter(|r| r.replaces())
            .ok_or_else(|| {
                PyValueError::new_err(format!("unknown replacement reason {reason:?}"))
            })?;
        verdict_to_py(py, self.runner.drain(reason, detail))
    }

    fn shutdown(&self, py: Python<'_>, detail: String) -> PyResult<Option<Py<PyVerdict>>> {
        verdict_to_py(py, self.runner.drain(Reason::Shutdown, detail))
    }

    fn verdict(&self, py: Python<'_>) -> PyResult<Option<Py<PyVerdict>>> {
        verdict_to_py(py, self.runner.verdict())
    }

    fn finish(&self) -> Option<i32> {
        self.runner.finish()
    }

    fn in_flight(&self) -> u64 {
        self.runner.traffic().in_flight()
    }

    fn event_fd(&self) -> i32 {
        self.events.fd()
    }

    fn drain_events(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        self.events
            .drain()
            .into_iter()
            .map(|e| event_to_py(py, e))
            .collect()
    }

    fn history(&self, py: Python<'_>) -> PyResult<Vec<Py<PyCheckOutcome>>> {
        self.runner
            .history()
            .into_iter()
            .map(|inner| Py::new(py, PyCheckOutcome { inner }))
            .collect()
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        json_bindings::to_dict(py, &status::life_json(&self.runner.handle()))
    }

    /// GPU monitoring's state for `/status`; None when it was not asked for.
    fn gpu_status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.gpu
            .as_ref()
            .map(|g| json_bindings::to_dict(py, &status::gpu_json(&g.state())))
            .transpose()
    }
}

/// The fd limits: the soft limit runwarden was started with (the app keeps it) and the
/// one in force, raised to the hard limit on the first call.
#[pyfunction]
fn fd_limits() -> (usize, usize) {
    let limits = proxy::fd_limits();
    (limits.original, limits.current)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The checkout this extension was compiled in: `pip install .` leaves no source behind in
    // site-packages, and the fault kit builds its fake drivers there (runwarden.testing).
    m.add("BUILT_FROM", env!("CARGO_MANIFEST_DIR"))?;
    m.add("SettingsError", m.py().get_type::<SettingsError>())?;
    m.add_class::<PyHealthSettings>()?;
    m.add_class::<PyCheckOutcome>()?;
    m.add_class::<PyVerdict>()?;
    // The tables Python builds its command line, exit codes and docs from.
    let settings = setting_bindings::specs::<settings::HealthSettings>(m.py(), "health")?;
    for spec in setting_bindings::specs::<settings::ProxySettings>(m.py(), "proxy")?.iter() {
        settings.append(spec)?;
    }
    for spec in setting_bindings::specs::<settings::GpuSettings>(m.py(), "gpu")?.iter() {
        settings.append(spec)?;
    }
    m.add("SETTINGS", settings)?;
    let reasons = PyList::empty(m.py());
    for reason in Reason::ALL {
        reasons.append((reason.as_str(), reason.exit_code(), reason.meaning()))?;
    }
    m.add("REASONS", reasons)?;
    let rules = PyList::empty(m.py());
    for (rule, severity, meaning) in policy::RULES {
        rules.append((rule, severity.as_str(), meaning))?;
    }
    m.add("GPU_RULES", rules)?;
    m.add("PROMOTABLE_WARNINGS", policy::SUSTAINABLE_WARNINGS.to_vec())?;
    m.add_function(wrap_pyfunction!(fd_limits, m)?)?;
    m.add_class::<PyCore>()?;
    m.add_class::<PyGpuSettings>()?;
    m.add_class::<PyProxySettings>()?;
    m.add_class::<PyGpuSamples>()?;
    m.add_class::<PyGpuFinding>()?;
    m.add_class::<PyGpuMonitoring>()?;
    m.add_class::<PyLogLine>()?;
    m.add_class::<PyAccessLine>()?;
    m.add_class::<PyDrained>()?;
    m.add_class::<PyPortsClosed>()?;
    m.add_class::<PyFront>()?;
    m.add_class::<PyAsgiEntry>()?;
    m.add_class::<PyTicket>()?;
    m.add_class::<PyWaiting>()?;
    m.add_class::<PyAnswer>()?;
    m.add_class::<PyAppCheck>()?;
    m.add_class::<PyEntered>()?;
    Ok(())
}
