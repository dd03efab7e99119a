//! Python bindings of GPU monitoring: its settings in, its samples and findings out.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::nvml::sample::GpuSample;
use crate::nvml::{Found, GpuSettings};
use crate::setting_bindings::{from_kwargs, get, to_dict};
use crate::{json_bindings, status};
use crate::{repr_of, to_py};

/// GPU monitoring settings (SPEC G), validated. Immutable.
#[pyclass(frozen, module = "runwarden._core", name = "GpuSettings")]
#[derive(Clone)]
pub struct PyGpuSettings {
    pub inner: GpuSettings,
}

#[pymethods]
impl PyGpuSettings {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let settings: GpuSettings = from_kwargs(kwargs)?;
        Ok(PyGpuSettings {
            inner: settings.validate().map_err(to_py)?,
        })
    }

    /// Each setting by its name (`GpuSettings::SPECS`).
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        get(py, &self.inner, name)
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        repr_of("GpuSettings", &self.to_dict(py)?)
    }
}

/// One sample of every GPU (G4), and what it cost to take.
#[pyclass(frozen, module = "runwarden._core", name = "GpuSamples")]
pub struct PyGpuSamples {
    pub samples: Vec<GpuSample>,
    pub cost_seconds: f64,
}

#[pymethods]
impl PyGpuSamples {
    #[getter]
    fn cost_seconds(&self) -> f64 {
        self.cost_seconds
    }
    #[getter]
    fn samples<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.samples
            .iter()
            .map(|s| json_bindings::to_dict(py, &status::sample_json(s)))
            .collect()
    }
}

/// A GPU warning or fault (G2, G3).
#[pyclass(frozen, module = "runwarden._core", name = "GpuFinding")]
pub struct PyGpuFinding {
    pub inner: Found,
}

#[pymethods]
impl PyGpuFinding {
    #[getter]
    fn gpu(&self) -> Option<u32> {
        self.inner.finding.gpu
    }
    #[getter]
    fn uuid(&self) -> Option<&str> {
        self.inner.finding.uuid.as_deref()
    }
    #[getter]
    fn rule(&self) -> &'static str {
        self.inner.finding.rule
    }
    #[getter]
    fn severity(&self) -> &'static str {
        self.inner.finding.severity.as_str()
    }
    #[getter]
    fn detail(&self) -> &str {
        &self.inner.finding.detail
    }
    #[getter]
    fn xid(&self) -> Option<u64> {
        self.inner.finding.xid
    }
    #[getter]
    fn age_seconds(&self) -> f64 {
        self.inner.age.as_secs_f64()
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        json_bindings::to_dict(py, &status::found_json(&self.inner))
    }
    fn __repr__(&self) -> String {
        format!(
            "GpuFinding({} {} gpu={:?}: {})",
            self.severity(),
            self.rule(),
            self.gpu(),
            self.detail()
        )
    }
}

/// GPU monitoring started, or is off and why (sent once).
#[pyclass(frozen, module = "runwarden._core", name = "GpuMonitoring")]
pub struct PyGpuMonitoring {
    #[pyo3(get)]
    pub enabled: bool,
    #[pyo3(get)]
    pub detail: String,
}
