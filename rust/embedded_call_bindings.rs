//! The embedded front's call of the app, with no Python frame of its own (SPEC E).
//!
//! The ASGI middleware (`runwarden.asgi.Runwarden`) inherits its `__call__` from
//! `AsgiEntry`: a request the front admits at once costs one call into the core, which
//! calls the app with the request's `Ticket` as its `send`, and returns an `AppCall`, the
//! awaitable that drives the app's coroutine and hears how it ended: returned (the ticket
//! ends the visit), raised (R4: judged as the server's 500), or cancelled (D6: the
//! middleware's `_cancelled` answers 503 or cuts, in Python). Any other request (queued at
//! the door, answered by runwarden, a gateway's check, one under a request timeout, or one
//! before runwarden has started) takes the middleware's Python path (`_slow`, `_other`).
//!
//! Why not a Python `async def __call__`: a Python layer, any layer, costs the server about
//! 2,400 instructions per request (callgrind: a pass-through middleware against none), more
//! than every rule of the core together; this is the one place the embedded front is not
//! pure translation, and benches/RESULTS.md has the count.

use std::sync::OnceLock;

use pyo3::exceptions::{PyBaseException, PyException, PyStopIteration};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::embedded_bindings::{Entered, PyFront, PyTicket};

static CANCELLED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The middleware's base: its `__call__`.
#[pyclass(subclass, frozen, module = "runwarden._core", name = "AsgiEntry")]
pub struct PyAsgiEntry {
    /// Once runwarden runs: the front and the app. Unset, every request takes `_slow`.
    hot: OnceLock<Hot>,
}

struct Hot {
    front: Py<PyFront>,
    app: Py<PyAny>,
}

#[pymethods]
impl PyAsgiEntry {
    /// The subclass's own `__init__` takes the arguments.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        PyAsgiEntry {
            hot: OnceLock::new(),
        }
    }

    /// From now on, a request `front` admits at once is sent to `app` from here.
    fn serve_from_core(&self, front: Py<PyFront>, app: Py<PyAny>) {
        let _ = self.hot.set(Hot { front, app });
    }

    /// An ASGI 3 call: the app's coroutine for a request at the app (wrapped in an
    /// `AppCall`), else the middleware's coroutine for it.
    fn __call__(
        slf: &Bound<'_, Self>,
        scope: &Bound<'_, PyDict>,
        receive: &Bound<'_, PyAny>,
        send: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(hot) = slf.get().hot.get() else {
            return Ok(slf
                .call_method1(intern!(py, "_slow"), (scope, receive, send))?
                .unbind());
        };
        let ticket = match hot.front.get().admit(py, scope, send)? {
            Entered::Ticket(ticket) => ticket,
            Entered::Other(entry) => {
                return Ok(slf
                    .call_method1(intern!(py, "_other"), (entry, scope, receive, send))?
                    .unbind())
            }
        };
        let app_send = ticket.bind(py).getattr(intern!(py, "send"))?;
        let inner = match hot.app.bind(py).call1((scope, receive, app_send)) {
            Ok(inner) => inner.unbind(),
            Err(err) => {
                if err.is_instance_of::<PyException>(py) {
                    ticket.get().raised(); // R4
                }
                return Err(err);
            }
        };
        let call = PyAppCall {
            inner,
            ticket,
            entry: slf.clone().into_any().unbind(),
            send: send.clone().unbind(),
            fell_back: false,
        };
        Ok(Py::new(py, call)?.into_any())
    }
}

/// One request's call of the app, as the server awaits it (`__await__` gives itself; the
/// steps go to the app's coroutine). A step's outcome: a value the coroutine yields, or
/// the value it returned.
#[pyclass(module = "runwarden._core", name = "AppCall")]
pub struct PyAppCall {
    /// The app's coroutine; after a cancellation, the middleware's `_cancelled`.
    inner: Py<PyAny>,
    ticket: Py<PyTicket>,
    /// The middleware, for `_cancelled`.
    entry: Py<PyAny>,
    /// The server's `send`, for `_cancelled`'s 503.
    send: Py<PyAny>,
    fell_back: bool,
}

enum Step {
    Yielded(Py<PyAny>),
    Returned(Py<PyAny>),
}

impl Step {
    /// As `__next__` says it: a yielded value, or the end (a value returned other than None
    /// rides on StopIteration).
    fn next(self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self {
            Step::Yielded(value) => Ok(Some(value)),
            Step::Returned(value) if value.is_none(py) => Ok(None),
            Step::Returned(value) => Err(PyStopIteration::new_err((value,))),
        }
    }

    /// As `send` and `throw` say it: the end is always StopIteration.
    fn sent(self) -> PyResult<Py<PyAny>> {
        match self {
            Step::Yielded(value) => Ok(value),
            Step::Returned(value) => Err(PyStopIteration::new_err((value,))),
        }
    }
}

impl PyAppCall {
    fn resume(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: both objects are alive (held here), the GIL is held, and `out` receives a
        // new reference whenever the result is not an error.
        let sent = unsafe { ffi::PyIter_Send(self.inner.as_ptr(), value.as_ptr(), &mut out) };
        match sent {
            ffi::PySendResult::PYGEN_NEXT => Ok(Step::Yielded(
                unsafe { Bound::from_owned_ptr(py, out) }.unbind(),
            )),
            ffi::PySendResult::PYGEN_RETURN => {
                // The app returned: the request leaves the runner (if its response's last
                // part had not already), whoever still holds this call.
                self.ticket.get().done();
                Ok(Step::Returned(
                    unsafe { Bound::from_owned_ptr(py, out) }.unbind(),
                ))
            }
            ffi::PySendResult::PYGEN_ERROR => {
                let err = PyErr::fetch(py);
                self.failed(py, err)
            }
        }
    }

    /// The coroutine raised `err`.
    fn failed(&mut self, py: Python<'_>, err: PyErr) -> PyResult<Step> {
        if self.fell_back {
            return Err(err);
        }
        let cancelled = CANCELLED.import(py, "asyncio", "CancelledError")?;
        if err.is_instance(py, cancelled) {
            // D6: the middleware answers 503, or cuts (and re-raises), in Python.
            self.fell_back = true;
            let value = err.value(py);
            self.inner = self.entry.call_method1(
                py,
                intern!(py, "_cancelled"),
                (&self.ticket, &self.send, value),
            )?;
            return self.resume(py, &py.None().into_bound(py));
        }
        if err.is_instance_of::<PyException>(py) {
            self.ticket.get().raised(); // R4: the server answers it 500
        }
        Err(err)
    }
}

#[pymethods]
impl PyAppCall {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let none = py.None().into_bound(py);
        self.resume(py, &none)?.next(py)
    }

    fn send(&mut self, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.resume(value.py(), value)?.sent()
    }

    /// An exception thrown in (a cancellation, D6): thrown into the app's coroutine. The
    /// interpreter passes (type, value, traceback) on; the value alone goes on where there
    /// is one, as `throw`'s three-argument form is deprecated (3.12).
    #[pyo3(signature = (*args))]
    fn throw(&mut self, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let py = args.py();
        let value = args
            .get_item(1)
            .ok()
            .filter(|v| v.is_instance_of::<PyBaseException>());
        let thrown = match value {
            Some(value) => self
                .inner
                .bind(py)
                .call_method1(intern!(py, "throw"), (value,)),
            None => self.inner.bind(py).call_method1(intern!(py, "throw"), args),
        };
        let step = match thrown {
            Ok(value) => Step::Yielded(value.unbind()),
            Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
                self.ticket.get().done();
                Step::Returned(err.value(py).getattr(intern!(py, "value"))?.unbind())
            }
            Err(err) => self.failed(py, err)?,
        };
        step.sent()
    }

    /// The server closed its own coroutine: the app's is closed, and the request is over.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        let closed = self.inner.call_method0(py, intern!(py, "close")).map(drop);
        self.ticket.get().done();
        closed
    }
}
