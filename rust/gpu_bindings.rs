//! Python bindings of GPU monitoring: its settings in, its samples and findings out.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::nvml::sample::GpuSample;
use crate::nvml::{Found, GpuSettings, MonitorState};
use crate::setting_bindings::{from_kwargs, get, to_dict};
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

pub fn sample_dict<'py>(py: Python<'py>, s: &GpuSample) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", s.index)?;
    d.set_item("uuid", s.uuid.as_deref())?;
    d.set_item("name", s.name.as_deref())?;
    d.set_item("pci_bus_id", s.pci_bus_id.as_deref())?;
    d.set_item("temperature_c", s.temperature_c)?;
    d.set_item("memory_temperature_c", s.memory_temperature_c)?;
    d.set_item("sm_clock_mhz", s.sm_clock_mhz)?;
    d.set_item("memory_clock_mhz", s.memory_clock_mhz)?;
    d.set_item("throttle_reasons", s.throttle_reasons)?;
    d.set_item("power_mw", s.power_mw)?;
    d.set_item("gpu_utilization", s.gpu_utilization)?;
    d.set_item("memory_utilization", s.memory_utilization)?;
    d.set_item("memory_used_bytes", s.memory_used_bytes)?;
    d.set_item("memory_total_bytes", s.memory_total_bytes)?;
    d.set_item("energy_mj", s.energy_mj)?;
    d.set_item("pcie_replays", s.pcie_replays)?;
    let ecc = PyDict::new(py);
    ecc.set_item("volatile_corrected", s.ecc.volatile_corrected)?;
    ecc.set_item("volatile_uncorrected", s.ecc.volatile_uncorrected)?;
    ecc.set_item("aggregate_corrected", s.ecc.aggregate_corrected)?;
    ecc.set_item("aggregate_uncorrected", s.ecc.aggregate_uncorrected)?;
    d.set_item("ecc", ecc)?;
    match &s.retired_pages {
        Some(p) => {
            let pages = PyDict::new(py);
            pages.set_item("single_bit", p.single_bit)?;
            pages.set_item("double_bit", p.double_bit)?;
            pages.set_item("pending", p.pending)?;
            d.set_item("retired_pages", pages)?;
        }
        None => d.set_item("retired_pages", py.None())?,
    }
    match &s.remapped_rows {
        Some(r) => {
            let rows = PyDict::new(py);
            rows.set_item("correctable", r.correctable)?;
            rows.set_item("uncorrectable", r.uncorrectable)?;
            rows.set_item("pending", r.pending)?;
            rows.set_item("failure", r.failure)?;
            d.set_item("remapped_rows", rows)?;
        }
        None => d.set_item("remapped_rows", py.None())?,
    }
    let errors = PyList::empty(py);
    for e in &s.errors {
        let item = PyDict::new(py);
        item.set_item("call", e.call)?;
        item.set_item("error", e.error.to_string())?;
        errors.append(item)?;
    }
    d.set_item("errors", errors)?;
    Ok(d)
}

fn found_dict<'py>(py: Python<'py>, f: &Found) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("gpu", f.finding.gpu)?;
    d.set_item("uuid", &f.finding.uuid)?;
    d.set_item("rule", f.finding.rule)?;
    d.set_item("severity", f.finding.severity.as_str())?;
    d.set_item("detail", &f.finding.detail)?;
    d.set_item("xid", f.finding.xid)?;
    d.set_item("age_seconds", f.age.as_secs_f64())?;
    Ok(d)
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
        self.samples.iter().map(|s| sample_dict(py, s)).collect()
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
        found_dict(py, &self.inner)
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

/// The monitor's state for `/status`.
pub fn state_dict<'py>(py: Python<'py>, state: &MonitorState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("enabled", state.enabled)?;
    d.set_item("detail", &state.detail)?;
    d.set_item("driver_version", &state.driver_version)?;
    d.set_item("gpu_count", state.gpu_count)?;
    d.set_item(
        "sample_cost_seconds",
        state.sample_cost.map(|c| c.as_secs_f64()),
    )?;
    let samples: PyResult<Vec<_>> = state.samples.iter().map(|s| sample_dict(py, s)).collect();
    d.set_item("samples", samples?)?;
    let findings: PyResult<Vec<_>> = state.findings.iter().map(|f| found_dict(py, f)).collect();
    d.set_item("findings", findings?)?;
    let warnings = PyList::empty(py);
    for (gpu, rule, since) in &state.active_warnings {
        let w = PyDict::new(py);
        w.set_item("gpu", gpu)?;
        w.set_item("rule", rule)?;
        w.set_item("since_seconds", since.as_secs_f64())?;
        warnings.append(w)?;
    }
    d.set_item("active_warnings", warnings)?;
    let watched = PyList::empty(py);
    for gpu in &state.watched {
        let w = PyDict::new(py);
        w.set_item("index", gpu.index)?;
        w.set_item("uuid", gpu.uuid.as_deref())?;
        w.set_item("selected_by", &gpu.selector)?;
        w.set_item("events", &gpu.events)?;
        watched.append(w)?;
    }
    d.set_item("watched", watched)?;
    let missing = PyList::empty(py);
    for (selector, why) in &state.missing {
        let m = PyDict::new(py);
        m.set_item("selector", selector)?;
        m.set_item("why", why)?;
        missing.append(m)?;
    }
    d.set_item("missing", missing)?;
    Ok(d)
}
