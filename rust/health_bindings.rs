//! Python bindings of the health checks: their settings in, their outcomes and the
//! replacement verdict out.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::setting_bindings::{from_kwargs, get, to_dict};
use crate::settings::HealthSettings;
use crate::verdict::{Outcome, Verdict};
use crate::{repr_of, to_py};

/// The health-check settings of SPEC H, validated (H7). Immutable.
#[pyclass(frozen, module = "runwarden._core", name = "HealthSettings")]
#[derive(Clone)]
pub struct PyHealthSettings {
    pub inner: HealthSettings,
}

#[pymethods]
impl PyHealthSettings {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let settings: HealthSettings = from_kwargs(kwargs)?;
        Ok(PyHealthSettings {
            inner: settings.validate().map_err(to_py)?,
        })
    }

    /// Each setting by its name (`HealthSettings::SPECS`).
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        get(py, &self.inner, name)
    }

    #[getter]
    fn effective_start_period_seconds(&self) -> f64 {
        self.inner.effective_start_period().as_secs_f64()
    }

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        repr_of("HealthSettings", &self.to_dict(py)?)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyHealthSettings>()
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
    #[getter]
    fn made_ready(&self) -> bool {
        self.inner.made_ready
    }

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::json_bindings::to_dict(py, &crate::status::outcome_json(&self.inner))
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

/// Why the runner drains: a clean stop or a replacement (D1, D4). Sent once.
#[pyclass(frozen, module = "runwarden._core", name = "Verdict")]
pub struct PyVerdict {
    pub inner: Verdict,
}

#[pymethods]
impl PyVerdict {
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
    #[getter]
    fn exit_code(&self) -> i32 {
        self.inner.reason.exit_code()
    }
    /// Every reason but a clean stop replaces the runner.
    #[getter]
    fn replacing(&self) -> bool {
        self.inner.reason.replaces()
    }

    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::json_bindings::to_dict(py, &crate::status::verdict_json(&self.inner))
    }

    fn __repr__(&self) -> String {
        format!(
            "Verdict(reason={:?}, detail={:?}, exit_code={})",
            self.reason(),
            self.detail(),
            self.exit_code()
        )
    }
}
