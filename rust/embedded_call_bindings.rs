//! The embedded front's call of the app, with no Python frame of its own (SPEC E).
//!
//! The ASGI middleware (`runwarden.asgi.Runwarden`) inherits its `__call__` from
//! `AsgiEntry`: a request the front admits at once costs one call into the core, which
//! calls the app with the request's `Ticket`'s `send`, and returns the ticket itself as the
//! awaitable the server awaits. It drives the app's coroutine (`Call`) and hears how it
//! ended: returned (the visit ends), raised (R4: judged as the server's 500), or cancelled
//! (D6: the middleware's `_cancelled` answers 503 or cuts, in Python). One object per
//! request: the ticket is the request's visit, the app's `send` and the server's awaitable.
//! Any other request (queued at the door, answered by runwarden, a gateway's check, one
//! under a request timeout, or one before runwarden has started) takes the middleware's
//! Python path (`_slow`, `_other`).
//!
//! Why not a Python `async def __call__`: a Python layer, any layer, costs the server about
//! 2,400 instructions per request (callgrind: a pass-through middleware against none), more
//! than every rule of the core together; this is the one place the embedded front is not
//! pure translation, and benches/RESULTS.md has the count.

use std::sync::OnceLock;

use pyo3::exceptions::{PyBaseException, PyException, PyRuntimeError, PyStopIteration};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::embedded_bindings::{Entered, PyFront, PyTicket};
use crate::vectorcall_bindings;
use crate::worker::lock;

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

    /// An ASGI 3 call: for a request at the app, its ticket, driving the app's coroutine;
    /// else the middleware's coroutine for it.
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
        let app_send = PyTicket::app_send(ticket.bind(py))?;
        let called =
            vectorcall_bindings::call(hot.app.bind(py), [scope.as_any(), receive, &app_send]);
        let inner = match called {
            Ok(inner) => inner.unbind(),
            Err(err) => {
                if err.is_instance_of::<PyException>(py) {
                    ticket.get().raised(); // R4
                }
                return Err(err);
            }
        };
        *lock(&ticket.get().call) = Some(Call {
            inner: Some(inner),
            entry: slf.clone().into_any().unbind(),
            fell_back: false,
        });
        Ok(ticket.into_any())
    }
}

/// The core's call of the app for one request, held by its ticket, which the server awaits
/// (`__await__` gives the ticket; its steps go to the app's coroutine). While the call runs,
/// the ticket and the app's coroutine hold each other (the coroutine holds the ticket's
/// `send`): the call lets go of the coroutine as soon as it ends, and the ticket's
/// `__traverse__` shows the garbage collector the rest.
pub struct Call {
    /// The app's coroutine; after a cancellation, the middleware's `_cancelled`; None once
    /// it has ended.
    pub(crate) inner: Option<Py<PyAny>>,
    /// The middleware, for `_cancelled`.
    pub(crate) entry: Py<PyAny>,
    fell_back: bool,
}

/// A step's outcome: a value the coroutine yields, or the value it returned.
pub enum Step {
    Yielded(Py<PyAny>),
    Returned(Py<PyAny>),
}

impl Step {
    /// As `__next__` says it: a yielded value, or the end (a value returned other than None
    /// rides on StopIteration).
    pub fn next(self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self {
            Step::Yielded(value) => Ok(Some(value)),
            Step::Returned(value) if value.is_none(py) => Ok(None),
            Step::Returned(value) => Err(PyStopIteration::new_err((value,))),
        }
    }

    /// As `send` and `throw` say it: the end is always StopIteration.
    pub fn sent(self) -> PyResult<Py<PyAny>> {
        match self {
            Step::Yielded(value) => Ok(value),
            Step::Returned(value) => Err(PyStopIteration::new_err((value,))),
        }
    }
}

impl PyTicket {
    /// The coroutine the call drives now. Taken out of the lock (a new reference), as
    /// stepping it runs the app, which calls this ticket's `send`.
    fn running(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        lock(&self.call)
            .as_ref()
            .and_then(|call| call.inner.as_ref())
            .map(|inner| inner.clone_ref(py))
            .ok_or_else(|| PyRuntimeError::new_err("this request's call of the app has ended"))
    }

    /// The call ended: it lets go of the coroutine (after the lock is released, as a
    /// coroutine's release can run Python).
    fn ended(&self) {
        let inner = lock(&self.call).as_mut().and_then(|call| call.inner.take());
        drop(inner);
    }

    /// One step of the call, `value` sent in.
    pub fn resume(slf: &Bound<'_, PyTicket>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let py = slf.py();
        let ticket = slf.get();
        let inner = ticket.running(py)?;
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: both objects are alive (held here), the GIL is held, and `out` receives a
        // new reference whenever the result is not an error.
        let sent = unsafe { ffi::PyIter_Send(inner.as_ptr(), value.as_ptr(), &mut out) };
        drop(inner);
        match sent {
            ffi::PySendResult::PYGEN_NEXT => Ok(Step::Yielded(
                unsafe { Bound::from_owned_ptr(py, out) }.unbind(),
            )),
            ffi::PySendResult::PYGEN_RETURN => {
                // The app returned: the request leaves the runner (if its response's last
                // part had not already).
                ticket.done();
                ticket.ended();
                Ok(Step::Returned(
                    unsafe { Bound::from_owned_ptr(py, out) }.unbind(),
                ))
            }
            ffi::PySendResult::PYGEN_ERROR => {
                let err = PyErr::fetch(py);
                PyTicket::failed(slf, err)
            }
        }
    }

    /// The coroutine raised `err`.
    fn failed(slf: &Bound<'_, PyTicket>, err: PyErr) -> PyResult<Step> {
        let py = slf.py();
        let ticket = slf.get();
        let entry = {
            let call = lock(&ticket.call);
            match call.as_ref() {
                Some(call) if !call.fell_back => Some(call.entry.clone_ref(py)),
                _ => None,
            }
        };
        let Some(entry) = entry else {
            ticket.ended();
            return Err(err);
        };
        let cancelled = CANCELLED.import(py, "asyncio", "CancelledError")?;
        if err.is_instance(py, cancelled) {
            // D6: the middleware answers 503, or cuts (and re-raises), in Python.
            let value = err.value(py);
            let send = ticket.server_send.clone_ref(py);
            let fallback = entry.call_method1(py, intern!(py, "_cancelled"), (slf, send, value))?;
            if let Some(call) = lock(&ticket.call).as_mut() {
                call.fell_back = true;
                call.inner = Some(fallback);
            }
            return PyTicket::resume(slf, &py.None().into_bound(py));
        }
        if err.is_instance_of::<PyException>(py) {
            ticket.raised(); // R4: the server answers it 500
        }
        ticket.ended();
        Err(err)
    }

    /// An exception thrown in (a cancellation, D6): thrown into the app's coroutine. The
    /// interpreter passes (type, value, traceback) on; the value alone goes on where there
    /// is one, as `throw`'s three-argument form is deprecated (3.12).
    pub fn thrown(slf: &Bound<'_, PyTicket>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let py = args.py();
        let ticket = slf.get();
        let inner = ticket.running(py)?;
        let value = args
            .get_item(1)
            .ok()
            .filter(|v| v.is_instance_of::<PyBaseException>());
        let thrown = match value {
            Some(value) => inner.bind(py).call_method1(intern!(py, "throw"), (value,)),
            None => inner.bind(py).call_method1(intern!(py, "throw"), args),
        };
        drop(inner);
        let step = match thrown {
            Ok(value) => Step::Yielded(value.unbind()),
            Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
                ticket.done();
                ticket.ended();
                Step::Returned(err.value(py).getattr(intern!(py, "value"))?.unbind())
            }
            Err(err) => PyTicket::failed(slf, err)?,
        };
        step.sent()
    }

    /// The server closed its own coroutine: the app's is closed, and the request is over.
    pub fn closed(&self, py: Python<'_>) -> PyResult<()> {
        let inner = lock(&self.call)
            .as_ref()
            .and_then(|call| call.inner.as_ref())
            .map(|inner| inner.clone_ref(py));
        let closed = match inner {
            Some(inner) => inner.call_method0(py, intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        self.done();
        self.ended();
        closed
    }
}
