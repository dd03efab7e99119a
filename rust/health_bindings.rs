//! Python bindings of the health checks: their settings in, their outcomes and the
//! replacement verdict out.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error;
use crate::settings::{HealthSettings, Method};
use crate::verdict::{Outcome, Replacement};
use crate::{boolean, integer, non_negative_int, number, repr_of, text, to_py, SettingsError};

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
    pub inner: HealthSettings,
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

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
    pub inner: Outcome,
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

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
    pub inner: Replacement,
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

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
