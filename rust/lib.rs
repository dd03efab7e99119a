//! Python bindings of the runwarden core. Only bindings live here: the logic is in the
//! modules below, which know nothing of Python and are tested with `cargo test`.

pub mod checker;
pub mod error;
pub mod events;
mod gpu_bindings;
mod health_bindings;
pub mod lifecycle;
pub mod nvml;
pub mod policy;
pub mod probe;
pub mod scheduler;
pub mod setting;
mod setting_bindings;
pub mod settings;
pub mod traffic;
pub mod verdict;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use checker::Checker;
use error::CoreError;
use events::EventQueue;
use gpu_bindings::{PyGpuFinding, PyGpuMonitoring, PyGpuSamples, PyGpuSettings};
use health_bindings::{PyCheckOutcome, PyHealthCheck, PyVerdict};
use nvml::GpuMonitor;
use scheduler::TriggerAnswer;
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
    if let CoreError::State(_) = error {
        return PyRuntimeError::new_err(error.to_string());
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
    })
}

/// The scheduler and its threads.
#[pyclass(frozen, module = "runwarden._core", name = "Core")]
pub struct PyCore {
    events: Arc<EventQueue>,
    checker: Checker,
    gpu: Option<GpuMonitor>,
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
                    checker.drainer(),
                )
            })
            .transpose()
            .map_err(to_py)?;
        Ok(PyCore {
            events,
            checker,
            gpu,
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

    fn restart(&self) -> bool {
        self.checker.restart()
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

    fn report_response(&self, py: Python<'_>, status: u16) -> PyResult<Option<Py<PyVerdict>>> {
        verdict_to_py(py, self.checker.response(status))
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
        verdict_to_py(py, self.checker.drain(reason, detail))
    }

    fn shutdown(&self, py: Python<'_>, detail: String) -> PyResult<Option<Py<PyVerdict>>> {
        verdict_to_py(py, self.checker.drain(Reason::Shutdown, detail))
    }

    fn verdict(&self, py: Python<'_>) -> PyResult<Option<Py<PyVerdict>>> {
        verdict_to_py(py, self.checker.verdict())
    }

    fn finish(&self) -> Option<i32> {
        self.checker.finish()
    }

    fn request_started(&self) {
        self.checker.request_started()
    }

    fn request_progress(&self) {
        self.checker.traffic().progress()
    }

    fn request_finished(&self) -> u64 {
        self.checker.traffic().finished()
    }

    fn in_flight(&self) -> u64 {
        self.checker.traffic().in_flight()
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
        d.set_item("state", snap.state)?;
        d.set_item("ready", snap.ready)?;
        match snap.verdict {
            Some(inner) => {
                d.set_item("reason", inner.reason.as_str())?;
                d.set_item("detail", &inner.detail)?;
                d.set_item("exit_code", snap.exit_code)?;
                d.set_item("draining_since_age_seconds", inner.age.as_secs_f64())?;
            }
            None => {
                for key in [
                    "reason",
                    "detail",
                    "exit_code",
                    "draining_since_age_seconds",
                ] {
                    d.set_item(key, py.None())?;
                }
            }
        }
        d.set_item("age_seconds", snap.age.as_secs_f64())?;
        d.set_item("consecutive_failures", snap.failures)?;
        d.set_item("running_check", snap.running_check)?;
        d.set_item("health_url", snap.probe_url)?;
        Ok(d)
    }

    /// GPU monitoring's state for `/status`; None when it was not asked for.
    fn gpu_status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.gpu
            .as_ref()
            .map(|g| gpu_bindings::state_dict(py, &g.state()))
            .transpose()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SettingsError", m.py().get_type::<SettingsError>())?;
    m.add_class::<PyHealthCheck>()?;
    m.add_class::<PyCheckOutcome>()?;
    m.add_class::<PyVerdict>()?;
    // The tables Python builds its command line, exit codes and docs from.
    let settings = setting_bindings::specs::<settings::HealthSettings>(m.py(), "health")?;
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
    m.add_class::<PyCore>()?;
    m.add_class::<PyGpuSettings>()?;
    m.add_class::<PyGpuSamples>()?;
    m.add_class::<PyGpuFinding>()?;
    m.add_class::<PyGpuMonitoring>()?;
    Ok(())
}
