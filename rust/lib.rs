//! Python bindings of the runwarden core. Only bindings live here: the logic is in the
//! modules below, which know nothing of Python and are tested with `cargo test`.

pub mod checker;
pub mod error;
pub mod events;
mod gpu_bindings;
mod health_bindings;
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
use health_bindings::{PyCheckOutcome, PyHealthCheck, PyReplace};
use nvml::GpuMonitor;
use scheduler::TriggerAnswer;
use verdict::{Event, Reason, Trigger};

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

pub(crate) fn boolean(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
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

pub(crate) fn non_negative_int(name: &'static str, value: i64) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| to_py(error::bad_setting(name, "an integer >= 0", value)))
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
