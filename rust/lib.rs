//! Python bindings of the runwarden core. Only bindings live here: the logic is in the
//! modules below, which know nothing of Python and are tested with `cargo test`.

pub mod checker;
pub mod error;
pub mod events;
mod gpu_bindings;
pub mod nvml;
pub mod policy;
pub mod probe;
pub mod scheduler;
pub mod settings;
pub mod traffic;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use checker::Checker;
use error::CoreError;
use events::EventQueue;
use gpu_bindings::{PyGpuFinding, PyGpuMonitoring, PyGpuSamples, PyGpuSettings};
use nvml::GpuMonitor;
use scheduler::TriggerAnswer;
use settings::{HealthSettings, Method};
use verdict::{Event, Outcome, Reason, Replacement, Trigger};

create_exception!(
    runwarden._core,
    SettingsError,
    PyValueError,
    "A setting is invalid; the message names it, says what is allowed and what was given."
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
        CoreError::Setting { .. } => SettingsError::new_err(error.to_string()),
        CoreError::State(_) => PyRuntimeError::new_err(error.to_string()),
    }
}

fn type_error(name: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let shown = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    SettingsError::new_err(format!("{name} must be {expected}, got {shown}"))
}

pub(crate) fn integer(name: &str, value: &Bound<'_, PyAny>) -> PyResult<i64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(type_error(name, "an integer", value));
    }
    value
        .extract()
        .map_err(|_| type_error(name, "an integer", value))
}

pub(crate) fn number(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
    {
        return Err(type_error(name, "a number", value));
    }
    value
        .extract()
        .map_err(|_| type_error(name, "a number", value))
}

fn boolean(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !value.is_instance_of::<PyBool>() {
        return Err(type_error(name, "True or False", value));
    }
    value.extract()
}

pub(crate) fn text(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if !value.is_instance_of::<PyString>() {
        return Err(type_error(name, "a string", value));
    }
    value.extract()
}

fn non_negative_int(name: &'static str, value: i64) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| to_py(error::bad_setting(name, "an integer >= 0", value)))
}

const HEALTH_SETTINGS: [&str; 12] = [
    "start_period_seconds",
    "timeout_seconds",
    "failure_threshold",
    "call_regularly",
    "period_seconds",
    "startup_timeout_seconds",
    "health_path",
    "health_method",
    "allow_on_busy",
    "stall_seconds",
    "trigger_interval_seconds",
    "history_size",
];

/// The health-check settings of SPEC H, validated (H7). Immutable.
#[pyclass(frozen, module = "runwarden._core", name = "HealthCheck")]
#[derive(Clone)]
pub struct PyHealthCheck {
    inner: HealthSettings,
}

#[pymethods]
impl PyHealthCheck {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut s = HealthSettings::default();
        for (key, value) in kwargs.into_iter().flatten() {
            let key: String = key.extract()?;
            let v = &value;
            match key.as_str() {
                "start_period_seconds" => {
                    s.start_period_seconds =
                        non_negative_int("start_period_seconds", integer(&key, v)?)?
                }
                "timeout_seconds" => s.timeout_seconds = number(&key, v)?,
                "failure_threshold" => {
                    let n = integer(&key, v)?;
                    s.failure_threshold = u32::try_from(n).map_err(|_| {
                        to_py(error::bad_setting(
                            "failure_threshold",
                            "an integer >= 1",
                            n,
                        ))
                    })?
                }
                "call_regularly" => s.call_regularly = boolean(&key, v)?,
                "period_seconds" => s.period_seconds = number(&key, v)?,
                "startup_timeout_seconds" => s.startup_timeout_seconds = number(&key, v)?,
                "health_path" => s.health_path = text(&key, v)?,
                "health_method" => {
                    s.health_method = Method::parse(&text(&key, v)?).map_err(to_py)?
                }
                "allow_on_busy" => s.allow_on_busy = boolean(&key, v)?,
                "stall_seconds" => {
                    s.stall_seconds = if v.is_none() {
                        None
                    } else {
                        Some(number(&key, v)?)
                    }
                }
                "trigger_interval_seconds" => s.trigger_interval_seconds = number(&key, v)?,
                "history_size" => {
                    let n = integer(&key, v)?;
                    s.history_size = usize::try_from(n).map_err(|_| {
                        to_py(error::bad_setting("history_size", "an integer >= 1", n))
                    })?
                }
                unknown => {
                    return Err(SettingsError::new_err(format!(
                        "unknown health-check setting {unknown:?}; known settings: {}",
                        HEALTH_SETTINGS.join(", ")
                    )))
                }
            }
        }
        Ok(PyHealthCheck {
            inner: s.validate().map_err(to_py)?,
        })
    }

    #[getter]
    fn start_period_seconds(&self) -> u64 {
        self.inner.start_period_seconds
    }
    #[getter]
    fn timeout_seconds(&self) -> f64 {
        self.inner.timeout_seconds
    }
    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.inner.failure_threshold
    }
    #[getter]
    fn call_regularly(&self) -> bool {
        self.inner.call_regularly
    }
    #[getter]
    fn period_seconds(&self) -> f64 {
        self.inner.period_seconds
    }
    #[getter]
    fn startup_timeout_seconds(&self) -> f64 {
        self.inner.startup_timeout_seconds
    }
    #[getter]
    fn health_path(&self) -> &str {
        &self.inner.health_path
    }
    #[getter]
    fn health_method(&self) -> &'static str {
        self.inner.health_method.as_str()
    }
    #[getter]
    fn allow_on_busy(&self) -> bool {
        self.inner.allow_on_busy
    }
    #[getter]
    fn stall_seconds(&self) -> Option<f64> {
        self.inner.stall_seconds
    }
    #[getter]
    fn trigger_interval_seconds(&self) -> f64 {
        self.inner.trigger_interval_seconds
    }
    #[getter]
    fn history_size(&self) -> usize {
        self.inner.history_size
    }
    #[getter]
    fn effective_start_period_seconds(&self) -> f64 {
        self.inner.effective_start_period().as_secs_f64()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let d = PyDict::new(py);
        d.set_item("start_period_seconds", s.start_period_seconds)?;
        d.set_item("timeout_seconds", s.timeout_seconds)?;
        d.set_item("failure_threshold", s.failure_threshold)?;
        d.set_item("call_regularly", s.call_regularly)?;
        d.set_item("period_seconds", s.period_seconds)?;
        d.set_item("startup_timeout_seconds", s.startup_timeout_seconds)?;
        d.set_item("health_path", &s.health_path)?;
        d.set_item("health_method", s.health_method.as_str())?;
        d.set_item("allow_on_busy", s.allow_on_busy)?;
        d.set_item("stall_seconds", s.stall_seconds)?;
        d.set_item("trigger_interval_seconds", s.trigger_interval_seconds)?;
        d.set_item("history_size", s.history_size)?;
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        repr_of("HealthCheck", &self.to_dict(py)?)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyHealthCheck>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }
}

/// One finished health check (H8).
#[pyclass(frozen, module = "runwarden._core", name = "CheckOutcome")]
pub struct PyCheckOutcome {
    inner: Outcome,
}

#[pymethods]
impl PyCheckOutcome {
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id
    }
    #[getter]
    fn triggers(&self) -> Vec<&'static str> {
        self.inner.triggers.iter().map(|t| t.as_str()).collect()
    }
    #[getter]
    fn passed(&self) -> bool {
        self.inner.report.passed()
    }
    #[getter]
    fn status(&self) -> Option<u16> {
        self.inner.report.status
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.report.error.as_deref()
    }
    #[getter]
    fn latency_seconds(&self) -> f64 {
        self.inner.report.latency.as_secs_f64()
    }
    #[getter]
    fn age_seconds(&self) -> f64 {
        self.inner.age.as_secs_f64()
    }
    #[getter]
    fn counted(&self) -> &'static str {
        self.inner.counted.as_str()
    }
    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", self.id())?;
        d.set_item("triggers", self.triggers())?;
        d.set_item("passed", self.passed())?;
        d.set_item("status", self.status())?;
        d.set_item("error", self.error())?;
        d.set_item("latency_seconds", self.latency_seconds())?;
        d.set_item("age_seconds", self.age_seconds())?;
        d.set_item("counted", self.counted())?;
        d.set_item("consecutive_failures", self.consecutive_failures())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "CheckOutcome(id={}, passed={}, {}, counted={})",
            self.inner.id,
            self.passed(),
            self.inner.report.describe(),
            self.counted()
        )
    }
}

/// The runner must be replaced.
#[pyclass(frozen, module = "runwarden._core", name = "Replace")]
pub struct PyReplace {
    inner: Replacement,
}

#[pymethods]
impl PyReplace {
    #[getter]
    fn reason(&self) -> &'static str {
        self.inner.reason.as_str()
    }
    #[getter]
    fn detail(&self) -> &str {
        &self.inner.detail
    }
    #[getter]
    fn age_seconds(&self) -> f64 {
        self.inner.age.as_secs_f64()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("reason", self.reason())?;
        d.set_item("detail", self.detail())?;
        d.set_item("age_seconds", self.age_seconds())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Replace(reason={:?}, detail={:?})",
            self.reason(),
            self.detail()
        )
    }
}

fn event_to_py(py: Python<'_>, event: Event) -> PyResult<Py<PyAny>> {
    Ok(match event {
        Event::Check(inner) => Py::new(py, PyCheckOutcome { inner })?.into_any(),
        Event::Replace(inner) => Py::new(py, PyReplace { inner })?.into_any(),
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
    })
}

/// The scheduler and its threads.
#[pyclass(frozen, module = "runwarden._core", name = "Core")]
pub struct PyCore {
    events: Arc<EventQueue>,
    checker: Checker,
    gpu: Option<GpuMonitor>,
    health: PyHealthCheck,
}

#[pymethods]
impl PyCore {
    #[new]
    #[pyo3(signature = (health, app_url, gpu = None))]
    fn new(
        health: &Bound<'_, PyHealthCheck>,
        app_url: &str,
        gpu: Option<&Bound<'_, PyGpuSettings>>,
    ) -> PyResult<Self> {
        let health = health.get().clone();
        let events = EventQueue::new().map(Arc::new).map_err(|e| {
            PyRuntimeError::new_err(format!("could not create the event socket: {e}"))
        })?;
        let checker =
            Checker::new(health.inner.clone(), app_url, Arc::clone(&events)).map_err(to_py)?;
        let gpu = gpu
            .map(|g| {
                GpuMonitor::new(
                    g.get().inner.clone(),
                    Arc::clone(&events),
                    checker.replacer(),
                )
            })
            .transpose()
            .map_err(to_py)?;
        Ok(PyCore {
            events,
            checker,
            gpu,
            health,
        })
    }

    fn start(&self) -> PyResult<()> {
        self.checker.start().map_err(to_py)?;
        if let Some(gpu) = &self.gpu {
            gpu.start().map_err(to_py)?;
        }
        Ok(())
    }

    fn app_started(&self) {
        self.checker.restart_clock()
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
            let gpu_stopped = self.gpu.as_ref().is_none_or(|g| g.stop(timeout));
            self.checker.stop(timeout) && gpu_stopped
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
        match self.checker.trigger(trigger) {
            TriggerAnswer::Pending(id) => Ok(id.into_pyobject(py)?.into_any().unbind()),
            TriggerAnswer::Latest(outcome) => {
                Ok(Py::new(py, PyCheckOutcome { inner: *outcome })?.into_any())
            }
        }
    }

    fn manual_check(&self) {
        self.checker.manual()
    }

    fn report_response(&self, status: u16) {
        self.checker.response(status)
    }

    fn replace(&self, reason: &str, detail: String) -> PyResult<bool> {
        let reason = Reason::parse(reason).ok_or_else(|| {
            PyValueError::new_err(format!("unknown replacement reason {reason:?}"))
        })?;
        Ok(self.checker.replace(reason, detail))
    }

    fn request_started(&self) {
        self.checker.request_started()
    }

    fn request_progress(&self) {
        self.checker.traffic().progress()
    }

    fn request_finished(&self) {
        self.checker.traffic().finished()
    }

    fn client_wait_started(&self) {
        self.checker.client_wait_started()
    }

    fn client_wait_finished(&self) {
        self.checker.client_wait_finished()
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
        self.checker
            .history()
            .into_iter()
            .map(|inner| Py::new(py, PyCheckOutcome { inner }))
            .collect()
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = self.checker.snapshot();
        let traffic = self.checker.traffic().snapshot();
        let d = PyDict::new(py);
        d.set_item("age_seconds", snap.age.as_secs_f64())?;
        d.set_item("ready", snap.ready)?;
        d.set_item("consecutive_failures", snap.failures)?;
        d.set_item("running_check", snap.running_check)?;
        d.set_item("health_url", snap.probe_url)?;
        match snap.replaced {
            Some(inner) => d.set_item("replacement", PyReplace { inner }.to_dict(py)?)?,
            None => d.set_item("replacement", py.None())?,
        }
        d.set_item("in_flight", traffic.in_flight)?;
        d.set_item("settings", self.health.to_dict(py)?)?;
        Ok(d)
    }

    /// GPU monitoring's state for `/status`; None when it was not asked for.
    fn gpu_status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.gpu
            .as_ref()
            .map(|g| gpu_bindings::state_dict(py, &g.state(), g.settings()))
            .transpose()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SettingsError", m.py().get_type::<SettingsError>())?;
    m.add_class::<PyHealthCheck>()?;
    m.add_class::<PyCheckOutcome>()?;
    m.add_class::<PyReplace>()?;
    m.add_class::<PyCore>()?;
    m.add_class::<PyGpuSettings>()?;
    m.add_class::<PyGpuSamples>()?;
    m.add_class::<PyGpuFinding>()?;
    m.add_class::<PyGpuMonitoring>()?;
    Ok(())
}
