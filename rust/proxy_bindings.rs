//! Python bindings of the data plane: its settings in, what it has to say out (log lines,
//! access-log lines, the drain's end, the ports' close).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::setting_bindings::{from_kwargs, get, to_dict};
use crate::settings::ProxySettings;
use crate::verdict::{AccessLine, Drained, LogLine};
use crate::{repr_of, to_py};

/// The data plane's settings (SPEC P, S, D), validated. Immutable.
#[pyclass(frozen, module = "runwarden._core", name = "ProxySettings")]
#[derive(Clone)]
pub struct PyProxySettings {
    pub inner: ProxySettings,
}

#[pymethods]
impl PyProxySettings {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let settings: ProxySettings = from_kwargs(kwargs)?;
        Ok(PyProxySettings {
            inner: settings.validate().map_err(to_py)?,
        })
    }

    /// Each setting by its name (`ProxySettings::SPECS`).
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        get(py, &self.inner, name)
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        repr_of("ProxySettings", &self.to_dict(py)?)
    }
}

/// A line for runwarden's log, from the data plane.
#[pyclass(frozen, module = "runwarden._core", name = "LogLine")]
pub struct PyLogLine {
    pub inner: LogLine,
}

#[pymethods]
impl PyLogLine {
    #[getter]
    fn level(&self) -> &'static str {
        self.inner.level
    }
    #[getter]
    fn logger(&self) -> &'static str {
        self.inner.logger
    }
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }
}

/// One proxied request, for the access log.
#[pyclass(frozen, module = "runwarden._core", name = "AccessLine")]
pub struct PyAccessLine {
    pub inner: AccessLine,
}

#[pymethods]
impl PyAccessLine {
    #[getter]
    fn client(&self) -> &str {
        &self.inner.client
    }
    #[getter]
    fn method(&self) -> &str {
        &self.inner.method
    }
    #[getter]
    fn target(&self) -> &str {
        &self.inner.target
    }
    #[getter]
    fn version(&self) -> &'static str {
        self.inner.version
    }
    #[getter]
    fn status(&self) -> u16 {
        self.inner.status
    }
    #[getter]
    fn duration_seconds(&self) -> f64 {
        self.inner.duration.as_secs_f64()
    }
}

/// The drain's wait for requests in flight is over (D2, D6).
#[pyclass(frozen, module = "runwarden._core", name = "Drained")]
pub struct PyDrained {
    pub inner: Drained,
}

#[pymethods]
impl PyDrained {
    /// Requests still in flight when the wait ended (0: all finished in time).
    #[getter]
    fn in_flight(&self) -> u64 {
        self.inner.in_flight
    }
    /// Of those, answered 503 with Retry-After.
    #[getter]
    fn answered(&self) -> u64 {
        self.inner.answered
    }
    /// Of those, cut mid-response.
    #[getter]
    fn cut(&self) -> u64 {
        self.inner.cut
    }
}

/// The proxy port is closed (D6).
#[pyclass(frozen, module = "runwarden._core", name = "PortsClosed")]
pub struct PyPortsClosed {
    /// Connections still open at the deadline, cut.
    #[pyo3(get)]
    pub cut: u64,
}
