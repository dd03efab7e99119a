//! Python bindings of the settings tables: a setting's value in from Python (checked by its
//! declared kind), out to Python, and each table as data for Python's command line.

use std::collections::{BTreeMap, BTreeSet};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::error::CoreError;
use crate::setting::{Kind, Spec, Value};
use crate::to_py;

/// What a struct declared with `settings!` offers the bindings.
pub trait Declared: Default {
    const SPECS: &'static [Spec];
    fn set(&mut self, name: &str, value: Value) -> crate::error::Result<()>;
    fn values(&self) -> Vec<(&'static str, Value)>;
}

macro_rules! declared {
    ($($t:ty),*) => {$(
        impl Declared for $t {
            const SPECS: &'static [Spec] = <$t>::SPECS;
            fn set(&mut self, name: &str, value: Value) -> crate::error::Result<()> {
                <$t>::set(self, name, value)
            }
            fn values(&self) -> Vec<(&'static str, Value)> {
                <$t>::values(self)
            }
        }
    )*};
}
declared!(
    crate::settings::HealthSettings,
    crate::settings::GpuSettings,
    crate::settings::ProxySettings
);

fn wrong(spec: &Spec, value: &Bound<'_, PyAny>) -> PyErr {
    let got = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    to_py(CoreError::Setting {
        name: spec.name,
        expected: spec.kind.type_name().to_owned(),
        got,
    })
}

fn is_number(value: &Bound<'_, PyAny>) -> bool {
    !value.is_instance_of::<PyBool>()
        && (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
}

/// A Python value as the setting's kind reads it; its bounds are checked by `set`.
pub fn from_py(spec: &Spec, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    let bad = || wrong(spec, value);
    Ok(match spec.kind {
        Kind::Auto { .. } if value.is_none() => Value::None,
        Kind::Int { .. } | Kind::Port | Kind::Auto { .. } => {
            if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
                return Err(bad());
            }
            Value::Int(value.extract().map_err(|_| bad())?)
        }
        Kind::OptionalNumber { .. } if value.is_none() => Value::None,
        Kind::Number { .. } | Kind::OptionalNumber { .. } if is_number(value) => {
            Value::Number(value.extract().map_err(|_| bad())?)
        }
        Kind::OptionalBool if value.is_none() => Value::None,
        Kind::Bool | Kind::OptionalBool if value.is_instance_of::<PyBool>() => {
            Value::Bool(value.extract()?)
        }
        Kind::OptionalText if value.is_none() => Value::None,
        Kind::Path
        | Kind::Choice(_)
        | Kind::OptionalText
        | Kind::Host
        | Kind::Text
        | Kind::HeaderName
            if value.is_instance_of::<PyString>() =>
        {
            Value::Text(value.extract()?)
        }
        Kind::Xids => {
            let mut xids = BTreeSet::new();
            for item in value.try_iter().map_err(|_| bad())? {
                let item = item?;
                if item.is_instance_of::<PyBool>() || !item.is_instance_of::<PyInt>() {
                    return Err(bad());
                }
                xids.insert(item.extract::<u64>().map_err(|_| bad())?);
            }
            Value::Xids(xids)
        }
        Kind::GpuSelectors if value.is_none() => Value::None,
        Kind::GpuSelectors | Kind::Networks => {
            let mut items = Vec::new();
            for item in value.try_iter().map_err(|_| bad())? {
                let item = item?;
                if !item.is_instance_of::<PyString>() {
                    return Err(bad());
                }
                items.push(item.extract()?);
            }
            Value::Texts(items)
        }
        Kind::Promotions => {
            let dict = value.cast::<PyDict>().map_err(|_| bad())?;
            let mut promote = BTreeMap::new();
            for (rule, seconds) in dict.iter() {
                if !rule.is_instance_of::<PyString>() || !is_number(&seconds) {
                    return Err(bad());
                }
                promote.insert(rule.extract()?, seconds.extract()?);
            }
            Value::Promotions(promote)
        }
        _ => return Err(bad()),
    })
}

pub fn to_py_value<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::None => py.None().into_bound(py),
        Value::Int(n) => n.into_pyobject(py)?.into_any(),
        Value::Number(n) => n.into_pyobject(py)?.into_any(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Text(t) => PyString::new(py, t).into_any(),
        Value::Xids(x) => PyList::new(py, x)?.into_any(),
        Value::Promotions(p) => p.clone().into_pyobject(py)?.into_any(),
        Value::Texts(t) => PyList::new(py, t)?.into_any(),
    })
}

/// Build a settings struct from keyword arguments: each checked against its declaration,
/// an unknown name refused with the known ones listed.
pub fn from_kwargs<T: Declared>(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<T> {
    let mut settings = T::default();
    for (key, value) in kwargs.into_iter().flatten() {
        let key: String = key.extract()?;
        let Some(spec) = T::SPECS.iter().find(|s| s.name == key) else {
            return Err(to_py(crate::setting::unknown(&key, T::SPECS)));
        };
        settings
            .set(spec.name, from_py(spec, &value)?)
            .map_err(to_py)?;
    }
    Ok(settings)
}

/// The settings as a dict, under their declared names, in declaration order.
pub fn to_dict<'py, T: Declared>(py: Python<'py>, settings: &T) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in settings.values() {
        d.set_item(name, to_py_value(py, &value)?)?;
    }
    Ok(d)
}

/// One declared setting's value by name, for attribute access.
pub fn get<'py, T: Declared>(
    py: Python<'py>,
    settings: &T,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    match settings.values().into_iter().find(|(n, _)| *n == name) {
        Some((_, value)) => to_py_value(py, &value),
        None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
            "no setting {name:?}"
        ))),
    }
}

/// The table Python builds its command line and docs from: one dict per setting.
pub fn specs<'py, T: Declared>(py: Python<'py>, group: &str) -> PyResult<Bound<'py, PyList>> {
    let defaults = T::default().values();
    let list = PyList::empty(py);
    for (spec, (_, default)) in T::SPECS.iter().zip(defaults) {
        let d = PyDict::new(py);
        d.set_item("name", spec.name)?;
        d.set_item("group", group)?;
        d.set_item("kind", spec.kind.as_str())?;
        d.set_item("expected", spec.kind.expected())?;
        d.set_item("default", to_py_value(py, &default)?)?;
        d.set_item("help", spec.help)?;
        match spec.kind {
            Kind::Int { min } | Kind::Auto { min } => d.set_item("min", min)?,
            Kind::Number { min, strict } | Kind::OptionalNumber { min, strict } => {
                d.set_item("min", min)?;
                d.set_item("strict", strict)?;
            }
            Kind::Choice(words) => d.set_item("choices", words.to_vec())?,
            _ => {}
        }
        list.append(d)?;
    }
    Ok(list)
}
