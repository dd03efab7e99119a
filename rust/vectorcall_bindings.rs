//! Calls into Python without an arguments tuple, where the interpreter allows it.
//!
//! The embedded front makes three calls into Python per request (the app, and the server's
//! `send` twice). Through the stable ABI each builds a tuple for its arguments and frees it
//! after (about 130 instructions a call, callgrind). CPython exports `PyObject_Vectorcall`
//! from 3.11 on with one signature (in the stable ABI from 3.12), which takes them from the
//! caller's stack instead. The wheel is abi3 for 3.10 and up, so the function is looked up
//! once, when first needed; where it is missing, the call takes the tuple as before.

use std::ffi::c_void;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

type Vectorcall = unsafe extern "C" fn(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject;

static VECTORCALL: OnceLock<Option<Vectorcall>> = OnceLock::new();

fn vectorcall() -> Option<Vectorcall> {
    *VECTORCALL.get_or_init(|| {
        // SAFETY: a lookup in the symbols already loaded into the process (the interpreter's).
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"PyObject_Vectorcall".as_ptr()) };
        // SAFETY: where CPython exports the symbol, it is this function (3.11 and up).
        (!found.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, Vectorcall>(found) })
    })
}

/// `callable(*args)`, positional arguments only.
pub fn call<'py, const N: usize>(
    callable: &Bound<'py, PyAny>,
    args: [&Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let Some(vectorcall) = vectorcall() else {
        let tuple = pyo3::types::PyTuple::new(py, args)?;
        return callable.call1(tuple);
    };
    let pointers = args.map(|arg| arg.as_ptr());
    // SAFETY: the callable and the arguments are alive and bound (the GIL held) for the
    // call; the arguments are borrowed, as vectorcall takes them; no keyword names.
    unsafe {
        let result = vectorcall(
            callable.as_ptr(),
            pointers.as_ptr(),
            N,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, result)
    }
}
