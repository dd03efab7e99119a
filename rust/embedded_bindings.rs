//! Python bindings of the embedded front (SPEC E): what the ASGI middleware calls per
//! request. Only translation lives here, between ASGI's dicts and the front's decisions
//! (`embedded/`): the per-request cost is one `Front.enter` and the wrapped `send`.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{Borrowed, PyTraverseError, PyVisit};

use crate::embedded::{Entry, Front, Visit, Wait};
use crate::embedded_call_bindings::Call;
use crate::front::Answer;
use crate::health_bindings::PyCheckOutcome;
use crate::vectorcall_bindings;
use crate::worker::lock;

const START: &str = "http.response.start";
const BODY: &str = "http.response.body";
const WEBSOCKET_START: &str = "websocket.http.response.start";

/// The embedded front: requests enter the runner by it.
#[pyclass(frozen, module = "runwarden._core", name = "Front")]
pub struct PyFront {
    front: Arc<Front>,
    /// The check header (H5, H6), lowercase.
    header: Arc<[u8]>,
}

impl PyFront {
    pub fn new(py: Python<'_>, front: Arc<Front>, header: Option<&str>) -> PyResult<Py<PyFront>> {
        let header = header
            .unwrap_or("x-fal-runner-health-check")
            .to_ascii_lowercase()
            .into_bytes()
            .into();
        Py::new(py, PyFront { front, header })
    }
}

/// `dict[key]`, the key used as it is (an interned name): PyO3's `get_item` converts and
/// counts the key on every look, and every request reads seven items from ASGI's scope and
/// messages. The item is a new reference, so it stays valid whatever Python code runs
/// next (a `send` or an object's `__bool__` may change the dict).
fn item<'py>(
    dict: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = dict.py();
    // SAFETY: a dict and a str, alive and bound (the GIL held); the result is borrowed.
    let found = unsafe { ffi::PyDict_GetItemWithError(dict.as_ptr(), key.as_ptr()) };
    if found.is_null() {
        return match PyErr::take(py) {
            Some(err) => Err(err),
            None => Ok(None),
        };
    }
    // SAFETY: the dict holds the item now; it is counted before anything else runs.
    Ok(Some(unsafe { Borrowed::from_ptr(py, found) }.to_owned()))
}

/// Whether a response body message says more follows.
fn more_body(message: &Bound<'_, PyDict>) -> PyResult<bool> {
    match item(message, intern!(message.py(), "more_body"))? {
        Some(more) => more.is_truthy(),
        None => Ok(false),
    }
}

/// A header pair's name: a tuple's first item read directly, any other sequence's by index.
fn name_of<'py>(pair: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    match pair.cast::<PyTuple>() {
        Ok(tuple) => tuple.get_item(0),
        Err(_) => pair.get_item(0),
    }
}

/// The name of the `index`th header of an ASGI header list of `(bytes, bytes)` tuples, as
/// borrowed bytes: every request pays for this look (twice: its head and its answer's), so
/// no reference is counted and nothing is allocated. None for any other shape (the caller
/// then reads the list the general way).
///
/// # Safety
/// `list` is a list, `index` is below its length, the GIL is held, and no Python code runs
/// while the returned bytes are used (the list and its items cannot change meanwhile).
unsafe fn borrowed_name<'a>(list: *mut ffi::PyObject, index: usize) -> Option<&'a [u8]> {
    let pair = ffi::PyList_GetItem(list, index as ffi::Py_ssize_t);
    if pair.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    if ffi::PyTuple_Check(pair) == 0 || ffi::PyTuple_Size(pair) < 1 {
        return None;
    }
    let name = ffi::PyTuple_GetItem(pair, 0);
    if name.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    if ffi::PyBytes_Check(name) == 0 {
        return None;
    }
    let data = ffi::PyBytes_AsString(name);
    let length = ffi::PyBytes_Size(name);
    if data.is_null() || length < 0 {
        ffi::PyErr_Clear();
        return None;
    }
    Some(std::slice::from_raw_parts(
        data.cast::<u8>(),
        length as usize,
    ))
}

/// Whether an ASGI header list holds `name` (any case).
fn holds(headers: &Bound<'_, PyAny>, name: &[u8]) -> PyResult<bool> {
    if let Ok(list) = headers.cast::<PyList>() {
        let mut general = false;
        for index in 0..list.len() {
            // SAFETY: a list, an index below its length, the GIL held (`headers` is bound),
            // and only Rust runs until the comparison is done.
            match unsafe { borrowed_name(list.as_ptr(), index) } {
                Some(key) if key.eq_ignore_ascii_case(name) => return Ok(true),
                Some(_) => {}
                None => {
                    general = true;
                    break;
                }
            }
        }
        if !general {
            return Ok(false);
        }
    }
    for pair in headers.try_iter()? {
        let pair = pair?;
        if name_of(&pair)?
            .cast::<PyBytes>()?
            .as_bytes()
            .eq_ignore_ascii_case(name)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The header list without `name`.
fn without<'py>(headers: &Bound<'py, PyAny>, name: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let kept = PyList::empty(headers.py());
    for pair in headers.try_iter()? {
        let pair = pair?;
        if !name_of(&pair)?
            .cast::<PyBytes>()?
            .as_bytes()
            .eq_ignore_ascii_case(name)
        {
            kept.append(pair)?;
        }
    }
    Ok(kept)
}

#[pymethods]
impl PyFront {
    /// A new request (`scope` of type http or websocket; `send` the server's): a `Ticket`
    /// to call the app with (it is the `send` to give the app), an `Answer` runwarden
    /// gives itself, a `Waiting` for a place at the app, or None for a trusted gateway's
    /// check request (H5: run a check and answer with `check_answer`). An untrusted peer's
    /// check header is removed from `scope` here.
    fn enter(
        &self,
        py: Python<'_>,
        scope: &Bound<'_, PyDict>,
        send: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Ok(match self.admit(py, scope, send)? {
            Entered::Ticket(ticket) => ticket.into_any(),
            Entered::Other(other) => other,
        })
    }
    /// H5: the answer to a gateway's check request, once the check is done (None: it was
    /// abandoned).
    #[pyo3(signature = (outcome = None))]
    fn check_answer(&self, outcome: Option<PyRef<'_, PyCheckOutcome>>) -> PyAnswer {
        PyAnswer::new(
            self.front.check_answer(outcome.as_ref().map(|o| &o.inner)),
            true,
        )
    }

    /// D6: the answer to a request still in flight at the drain's deadline that had not
    /// begun its response.
    fn past_the_drain(&self) -> PyAnswer {
        PyAnswer::new(self.front.past_the_drain(), true)
    }
}

/// What a request's entry gave: a ticket (the request is at the app), or anything else
/// (an answer, a wait, a gateway's check: None), as `Front.enter` returns it.
pub enum Entered {
    Ticket(Py<PyTicket>),
    Other(Py<PyAny>),
}

impl PyFront {
    /// `enter`'s decision, a ticket told apart (`AsgiEntry` calls the app with it at once).
    pub fn admit(
        &self,
        py: Python<'_>,
        scope: &Bound<'_, PyDict>,
        send: &Bound<'_, PyAny>,
    ) -> PyResult<Entered> {
        let headers = item(scope, intern!(py, "headers"))?;
        let asks = match &headers {
            Some(headers) => holds(headers, &self.header)?,
            None => false,
        };
        let peer = match asks {
            true => match scope.get_item(intern!(py, "client"))? {
                Some(client) if !client.is_none() => {
                    Some(client.get_item(0)?.str()?.to_str()?.to_owned())
                }
                _ => None,
            },
            false => None,
        };
        let (entry, strip) = self.front.enter(asks, peer.as_deref());
        if let (true, Some(headers)) = (strip, &headers) {
            scope.set_item(intern!(py, "headers"), without(headers, &self.header)?)?;
        }
        let send = send.clone().unbind();
        Ok(match entry {
            Entry::Admitted(visit) => {
                let scope = scope.clone().unbind();
                Entered::Ticket(Py::new(py, self.ticket(visit, send, scope))?)
            }
            Entry::Answer(answer) => {
                let http1 = http1(scope)?;
                Entered::Other(Py::new(py, PyAnswer::new(answer, http1))?.into_any())
            }
            Entry::Check => Entered::Other(py.None()),
            Entry::Queued(wait) => Entered::Other(
                Py::new(
                    py,
                    PyWaiting {
                        call: wait.call(),
                        wait: Mutex::new(Some(wait)),
                        front: Arc::clone(&self.front),
                        header: self.header.clone(),
                        send,
                        scope: scope.clone().unbind(),
                    },
                )?
                .into_any(),
            ),
        })
    }

    fn ticket(&self, visit: Visit, send: Py<PyAny>, scope: Py<PyDict>) -> PyTicket {
        ticket(&self.front, &self.header, visit, send, scope)
    }
}

/// Whether the request of `scope` came over HTTP/1 (its answers may carry `Connection`):
/// read only when an answer needs it, as most never do.
fn http1(scope: &Bound<'_, PyDict>) -> PyResult<bool> {
    Ok(match scope.get_item(intern!(scope.py(), "http_version"))? {
        Some(version) => !version.cast::<PyString>()?.to_str()?.starts_with('2'),
        None => true,
    })
}

fn ticket(
    front: &Arc<Front>,
    header: &Arc<[u8]>,
    visit: Visit,
    send: Py<PyAny>,
    scope: Py<PyDict>,
) -> PyTicket {
    PyTicket {
        visit: Mutex::new(visit),
        call: Mutex::new(None),
        server_send: send,
        h9: front.h9(),
        front: Arc::clone(front),
        header: Arc::clone(header),
        scope,
    }
}

/// One request at the app. Its `app_send` is the app's `send`: it judges the response's
/// status (R1, R4), removes the check header from it (H6) and adds `Connection: close`
/// while the runner drains (D6), then sends as the server's `send` would; the response's
/// last part ends the visit. `done()` ends it too (the app returned without one); so does
/// dropping it. When the core calls the app itself (`AsgiEntry`), the ticket is also the
/// awaitable the server awaits (`Call`, in `embedded_call_bindings.rs`).
#[pyclass(frozen, module = "runwarden._core", name = "Ticket")]
pub struct PyTicket {
    visit: Mutex<Visit>,
    /// The core's call of the app, when the core made it (`AsgiEntry`).
    pub(crate) call: Mutex<Option<Call>>,
    /// The server's `send`.
    pub(crate) server_send: Py<PyAny>,
    front: Arc<Front>,
    header: Arc<[u8]>,
    /// The request's scope, for its HTTP version when an answer needs it.
    scope: Py<PyDict>,
    /// Whether an H9 rule reads the bytes moved.
    h9: bool,
}

/// The definition of the app's `send`: a builtin function of one argument (`METH_O`), bound
/// to its ticket by `PyCMethod_New`. PyO3 would give a bound method looked up by name on
/// every request (about 320 instructions) and parse its arguments on every call (about 100
/// each, twice a request); this is made directly and called with the message alone.
struct SendDef(ffi::PyMethodDef);

// SAFETY: never written after initialisation; CPython only reads it.
unsafe impl Sync for SendDef {}

static SEND: SendDef = SendDef(ffi::PyMethodDef {
    ml_name: c"send".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: app_send,
    },
    ml_flags: ffi::METH_O,
    ml_doc: c"The app's ASGI send: judges the response (R1, R4, H6), then sends it.".as_ptr(),
});

/// `SEND`'s function: `slf` is the ticket it was bound to, `message` the one argument.
unsafe extern "C" fn app_send(
    slf: *mut ffi::PyObject,
    message: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a builtin function with the GIL held. PyO3's count of it is not
    // raised here (its trampoline would cost a thread-local look per call): `Bound`s release
    // their references at once as ever, and the only `Py` that can be dropped here, inside
    // an error, is released at PyO3's next entry instead.
    let py = unsafe { Python::assume_attached() };
    let sent = std::panic::catch_unwind(|| {
        // SAFETY: `SEND` is only ever bound to a `PyTicket` (`PyTicket::app_send`), and both
        // pointers are alive for the call.
        let ticket = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<PyTicket>() };
        let message = unsafe { Borrowed::from_ptr(py, message) };
        let message = message.cast::<PyDict>()?;
        ticket.get().app_sent(&message)
    });
    let sent = sent.unwrap_or_else(|_| Err(PanicException::new_err("panic in the app's send")));
    match sent {
        Ok(sent) => sent.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

impl PyTicket {
    /// The app's `send`, bound to this ticket.
    pub fn app_send<'py>(slf: &Bound<'py, PyTicket>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        // SAFETY: a static definition CPython only reads, and a live ticket, which the new
        // function holds a reference to.
        unsafe {
            let made = ffi::PyCMethod_New(
                std::ptr::addr_of!(SEND.0).cast_mut(),
                slf.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(py, made)
        }
    }

    /// The app sent `message`.
    fn app_sent<'py>(&self, message: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let py = message.py();
        let kind = item(message, intern!(py, "type"))?
            .ok_or_else(|| PyRuntimeError::new_err("an ASGI message without a type"))?;
        let kind = kind.cast::<PyString>()?;
        let kind = kind.to_str()?;
        if kind != START && kind != WEBSOCKET_START {
            if self.h9 {
                lock(&self.visit).progress();
            }
            // Read as the app gave it, before the server's `send` may change the message.
            let last = kind == BODY && !more_body(message)?;
            let sent = vectorcall_bindings::call(self.server_send.bind(py), [message.as_any()]);
            // The response's last part is handed to the server: the request leaves (D2),
            // its place is free (Q2), a manual check asked for runs (H6).
            if last {
                lock(&self.visit).finish();
            }
            return sent;
        }
        let status: u16 = item(message, intern!(py, "status"))?
            .ok_or_else(|| PyRuntimeError::new_err("a response start without a status"))?
            .extract()?;
        let headers = item(message, intern!(py, "headers"))?;
        let asks = match &headers {
            Some(headers) => holds(headers, &self.header)?,
            None => false,
        };
        lock(&self.visit).respond(status, asks);
        let close = self.front.draining() && http1(self.scope.bind(py))?;
        if !asks && !close {
            return vectorcall_bindings::call(self.server_send.bind(py), [message.as_any()]);
        }
        // The app's message is its own: the changed one is a copy.
        let changed = message.copy()?;
        let kept = match &headers {
            Some(headers) => without(headers, &self.header)?,
            None => PyList::empty(py),
        };
        if close {
            let connection = without(kept.as_any(), b"connection")?;
            connection.append((PyBytes::new(py, b"connection"), PyBytes::new(py, b"close")))?;
            changed.set_item("headers", connection)?;
        } else {
            changed.set_item("headers", kept)?;
        }
        vectorcall_bindings::call(self.server_send.bind(py), [changed.as_any()])
    }
}

#[pymethods]
impl PyTicket {
    /// The `send` the app is given (a builtin function bound to this ticket).
    #[getter(app_send)]
    fn app_send_getter<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        PyTicket::app_send(slf)
    }

    /// The core's call of the app (`AsgiEntry`), as the server awaits it: the ticket itself.
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        PyTicket::resume(slf, &py.None().into_bound(py))?.next(py)
    }

    /// A step of the call with `value` sent in (the coroutine protocol's `send`).
    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        PyTicket::resume(slf, value)?.sent()
    }

    #[pyo3(signature = (*args))]
    fn throw(slf: &Bound<'_, Self>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        PyTicket::thrown(slf, args)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.server_send)?;
        visit.call(&self.scope)?;
        // Held only for a moment, never while Python runs: if held now, the call is being
        // stepped, and the coroutine is alive anyway.
        if let Ok(call) = self.call.try_lock() {
            if let Some(call) = call.as_ref() {
                visit.call(&call.inner)?;
                visit.call(&call.entry)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let call = self.call.try_lock().ok().and_then(|mut call| call.take());
        drop(call);
    }

    /// The app raised: the request is over, and if its response had not begun the server
    /// answers 500, judged as the app's own 500 (R4: one extra check).
    pub fn raised(&self) {
        let mut visit = lock(&self.visit);
        if !visit.responded() {
            visit.respond(500, false);
        }
        visit.finish();
    }

    /// Whether the app's response has begun.
    #[getter]
    fn responded(&self) -> bool {
        lock(&self.visit).responded()
    }

    /// Q3: the request outlived `request_timeout_seconds`; the 504 to send if its response
    /// had not begun (None: cut it).
    fn timed_out(&self, py: Python<'_>) -> PyResult<Option<PyAnswer>> {
        let answer = lock(&self.visit).timed_out();
        answer
            .map(|answer| Ok(PyAnswer::new(answer, http1(self.scope.bind(py))?)))
            .transpose()
    }

    /// The app returned (or gave up): the request leaves the runner (D2, Q2, H6).
    pub fn done(&self) {
        lock(&self.visit).finish();
    }
}

/// A request waiting for a place at the app (Q2). Its `call` is the `Entered` event's.
#[pyclass(frozen, module = "runwarden._core", name = "Waiting")]
pub struct PyWaiting {
    call: u64,
    wait: Mutex<Option<Wait>>,
    front: Arc<Front>,
    header: Arc<[u8]>,
    send: Py<PyAny>,
    scope: Py<PyDict>,
}

#[pymethods]
impl PyWaiting {
    #[getter]
    fn call(&self) -> u64 {
        self.call
    }

    /// After `Entered`: a `Ticket` (the request is at the app now) or the door's `Answer`;
    /// None if the wait is not over.
    fn take(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut wait = lock(&self.wait);
        let Some(entered) = wait.as_mut().and_then(|w| w.take(&self.front)) else {
            return Ok(None);
        };
        *wait = None;
        Ok(Some(match entered {
            Ok(visit) => {
                let (send, scope) = (self.send.clone_ref(py), self.scope.clone_ref(py));
                Py::new(py, ticket(&self.front, &self.header, visit, send, scope))?.into_any()
            }
            Err(answer) => {
                let http1 = http1(self.scope.bind(py))?;
                Py::new(py, PyAnswer::new(answer, http1))?.into_any()
            }
        }))
    }

    /// The client left, or the server gave up the request: its place goes to the next in
    /// line at once, and it never reaches the app.
    fn abandon(&self) {
        lock(&self.wait).take();
    }
}

/// An answer runwarden gives itself (`front::Answer`), as ASGI's response messages take it.
#[pyclass(frozen, module = "runwarden._core", name = "Answer")]
pub struct PyAnswer {
    answer: Answer,
    http1: bool,
}

impl PyAnswer {
    fn new(answer: Answer, http1: bool) -> PyAnswer {
        PyAnswer { answer, http1 }
    }
}

#[pymethods]
impl PyAnswer {
    #[getter]
    fn status(&self) -> u16 {
        self.answer.status.as_u16()
    }

    /// The response's headers, as `http.response.start` takes them.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let a = &self.answer;
        let pair = |name: &[u8], value: &[u8]| {
            PyTuple::new(py, [PyBytes::new(py, name), PyBytes::new(py, value)])
        };
        let list = PyList::empty(py);
        list.append(pair(b"content-type", a.content_type.as_bytes())?)?;
        let length = a.body.len().to_string();
        list.append(pair(b"content-length", length.as_bytes())?)?;
        for (name, value) in &a.headers {
            list.append(pair(name.as_str().as_bytes(), value.as_bytes())?)?;
        }
        if a.close && self.http1 {
            list.append(pair(b"connection", b"close")?)?;
        }
        Ok(list)
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.answer.body)
    }

    fn __repr__(&self) -> String {
        format!("Answer(status={})", self.answer.status.as_u16())
    }
}

/// Embedded (E4): call the app's health route on this loop and answer check `call`
/// (`Core.answer_check`).
#[pyclass(frozen, module = "runwarden._core", name = "AppCheck")]
pub struct PyAppCheck {
    #[pyo3(get)]
    pub call: u64,
}

/// Embedded (Q2): the wait named `call` at the door is over (`Waiting.take`).
#[pyclass(frozen, module = "runwarden._core", name = "Entered")]
pub struct PyEntered {
    #[pyo3(get)]
    pub call: u64,
}
