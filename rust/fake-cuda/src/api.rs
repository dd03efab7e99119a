//! The exported CUDA driver API calls.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::kernels;
use crate::state::{self, Faults};
use crate::visible;

pub type CuResult = c_uint;
pub type CuDevice = c_int;
pub type CuDevicePtr = u64;

pub const SUCCESS: CuResult = 0;
pub const ERROR_INVALID_VALUE: CuResult = 1;
pub const ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const ERROR_NOT_INITIALIZED: CuResult = 3;
pub const ERROR_NO_DEVICE: CuResult = 100;
pub const ERROR_INVALID_DEVICE: CuResult = 101;
pub const ERROR_INVALID_IMAGE: CuResult = 200;
pub const ERROR_INVALID_CONTEXT: CuResult = 201;
pub const ERROR_NOT_FOUND: CuResult = 500;
pub const ERROR_ILLEGAL_ADDRESS: CuResult = 700;
pub const ERROR_LAUNCH_FAILED: CuResult = 719;

static INITIALISED: AtomicBool = AtomicBool::new(false);
/// Device memory: base address -> bytes. Addresses are made up, never dereferenced.
static MEMORY: Mutex<Option<HashMap<u64, Vec<u8>>>> = Mutex::new(None);
static NEXT_ADDRESS: AtomicU64 = AtomicU64::new(0x7f00_0000_0000);

/// A context: the GPU it is on, and a fault a launch left for the synchronisation.
pub struct Context {
    gpu: usize,
    pending: Option<CuResult>,
}

/// A module: the `.entry` names of its PTX, each a function.
pub struct Module {
    /// Never changed once loaded: a function's address stays valid until the unload.
    functions: Vec<Function>,
}

pub struct Function {
    name: String,
    gpu: usize,
}

thread_local! {
    static CURRENT: Cell<*mut Context> = const { Cell::new(std::ptr::null_mut()) };
}

fn memory<T>(f: impl FnOnce(&mut HashMap<u64, Vec<u8>>) -> T) -> T {
    let mut guard = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

fn ready() -> Result<(), CuResult> {
    if INITIALISED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ERROR_NOT_INITIALIZED)
    }
}

fn answer(result: Result<(), CuResult>) -> CuResult {
    result.err().unwrap_or(SUCCESS)
}

fn faults(gpu: usize) -> Faults {
    state::gpus()
        .get(gpu)
        .map(|g| g.faults.clone())
        .unwrap_or_default()
}

fn current() -> Result<&'static mut Context, CuResult> {
    let ctx = CURRENT.with(Cell::get);
    // SAFETY: contexts are boxes this library made and frees only in cuCtxDestroy.
    unsafe { ctx.as_mut() }.ok_or(ERROR_INVALID_CONTEXT)
}

#[no_mangle]
pub extern "C" fn cuInit(flags: c_uint) -> CuResult {
    if flags != 0 {
        return ERROR_INVALID_VALUE;
    }
    visible::read_environment();
    if visible::devices().is_empty() {
        return ERROR_NO_DEVICE;
    }
    INITIALISED.store(true, Ordering::Release);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CuResult {
    if version.is_null() {
        return ERROR_INVALID_VALUE;
    }
    *version = 12040;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CuResult {
    answer(ready().and_then(|()| {
        if count.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        *count = visible::devices().len() as c_int;
        Ok(())
    }))
}

fn device(ordinal: c_int) -> Result<visible::Device, CuResult> {
    ready()?;
    usize::try_from(ordinal)
        .ok()
        .and_then(|i| visible::devices().get(i).cloned())
        .ok_or(ERROR_INVALID_DEVICE)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CuDevice, ordinal: c_int) -> CuResult {
    answer(device(ordinal).and_then(|_| {
        if dev.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        *dev = ordinal;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CuDevice) -> CuResult {
    answer(device(dev).and_then(|gpu| {
        let len = usize::try_from(len).map_err(|_| ERROR_INVALID_VALUE)?;
        if name.is_null() || len == 0 {
            return Err(ERROR_INVALID_VALUE);
        }
        let bytes = gpu.name.as_bytes();
        let n = bytes.len().min(len - 1);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), name, n);
        *name.add(n) = 0;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CuDevice) -> CuResult {
    answer(device(dev).and_then(|gpu| {
        if uuid.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        *uuid = gpu.uuid;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CuDevice) -> CuResult {
    cuDeviceGetUuid(uuid, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut *mut Context,
    _flags: c_uint,
    dev: CuDevice,
) -> CuResult {
    answer(device(dev).and_then(|gpu| {
        if ctx.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        if gpu.lost {
            return Err(ERROR_LAUNCH_FAILED);
        }
        let made = Box::into_raw(Box::new(Context {
            gpu: gpu.gpu,
            pending: None,
        }));
        CURRENT.with(|c| c.set(made));
        *ctx = made;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: *mut Context) -> CuResult {
    if ctx.is_null() {
        return ERROR_INVALID_CONTEXT;
    }
    CURRENT.with(|c| {
        if c.get() == ctx {
            c.set(std::ptr::null_mut());
        }
    });
    drop(Box::from_raw(ctx));
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: *mut Context) -> CuResult {
    CURRENT.with(|c| c.set(ctx));
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CuResult {
    answer(current().and_then(|ctx| {
        if let Some(hang) = faults(ctx.gpu).hang {
            // Blocks while the state says so; clearing the hang releases it.
            let until = Instant::now() + hang;
            while Instant::now() < until && faults(ctx.gpu).hang.is_some() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        match ctx.pending.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    answer(current().and_then(|ctx| {
        if free.is_null() || total.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        *total = 80 << 30;
        *free = if faults(ctx.gpu).oom { 0 } else { 79 << 30 };
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut Module,
    image: *const c_void,
) -> CuResult {
    answer(current().and_then(|ctx| {
        if module.is_null() || image.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        let ptx = CStr::from_ptr(image.cast::<c_char>()).to_string_lossy();
        if !ptx.contains(".version") || !ptx.contains(".target") {
            return Err(ERROR_INVALID_IMAGE);
        }
        let functions = ptx
            .split(".entry")
            .skip(1)
            .filter_map(|rest| {
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let named = !name.is_empty();
                named.then_some(Function { name, gpu: ctx.gpu })
            })
            .collect();
        *module = Box::into_raw(Box::new(Module { functions }));
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: *mut Module) -> CuResult {
    if module.is_null() {
        return ERROR_INVALID_VALUE;
    }
    drop(Box::from_raw(module));
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    function: *mut *const Function,
    module: *const Module,
    name: *const c_char,
) -> CuResult {
    if function.is_null() || module.is_null() || name.is_null() {
        return ERROR_INVALID_VALUE;
    }
    let wanted = CStr::from_ptr(name).to_string_lossy();
    match (*module).functions.iter().find(|f| f.name == wanted) {
        Some(found) => {
            *function = std::ptr::from_ref::<Function>(found);
            SUCCESS
        }
        None => ERROR_NOT_FOUND,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(ptr: *mut CuDevicePtr, bytes: usize) -> CuResult {
    answer(current().and_then(|ctx| {
        if ptr.is_null() || bytes == 0 {
            return Err(ERROR_INVALID_VALUE);
        }
        if faults(ctx.gpu).oom {
            return Err(ERROR_OUT_OF_MEMORY);
        }
        let address =
            NEXT_ADDRESS.fetch_add((bytes as u64).next_multiple_of(256), Ordering::Relaxed);
        memory(|m| m.insert(address, vec![0; bytes]));
        *ptr = address;
        Ok(())
    }))
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(ptr: CuDevicePtr) -> CuResult {
    if memory(|m| m.remove(&ptr)).is_some() {
        SUCCESS
    } else {
        ERROR_INVALID_VALUE
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CuDevicePtr,
    src: *const c_void,
    bytes: usize,
) -> CuResult {
    memory(|m| match m.get_mut(&dst) {
        Some(buf) if buf.len() >= bytes && !src.is_null() => {
            std::ptr::copy_nonoverlapping(src.cast::<u8>(), buf.as_mut_ptr(), bytes);
            SUCCESS
        }
        _ => ERROR_INVALID_VALUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CuDevicePtr,
    bytes: usize,
) -> CuResult {
    memory(|m| match m.get(&src) {
        Some(buf) if buf.len() >= bytes && !dst.is_null() => {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), dst.cast::<u8>(), bytes);
            SUCCESS
        }
        _ => ERROR_INVALID_VALUE,
    })
}

/// The argument `i` of a launch, as a `T` (CUDA passes each argument's address).
unsafe fn arg<T: Copy>(params: *const *const c_void, i: usize) -> T {
    *(*params.add(i)).cast::<T>()
}

fn put_words(buf: &mut [u8], words: &[u32]) {
    for (chunk, w) in buf.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

#[allow(clippy::too_many_arguments)] // CUDA's signature
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    function: *const Function,
    _grid_x: c_uint,
    _grid_y: c_uint,
    _grid_z: c_uint,
    _block_x: c_uint,
    _block_y: c_uint,
    _block_z: c_uint,
    _shared: c_uint,
    _stream: *mut c_void,
    params: *const *const c_void,
    _extra: *const *const c_void,
) -> CuResult {
    answer(current().and_then(|ctx| {
        if function.is_null() || params.is_null() {
            return Err(ERROR_INVALID_VALUE);
        }
        let function = &*function;
        let faults = faults(function.gpu);
        if let Some(error) = faults.error {
            ctx.pending = Some(error);
            return Err(error);
        }
        let ran = memory(|m| -> Result<(), CuResult> {
            match function.name.as_str() {
                "runwarden_canary_mac" | "runwarden_canary_pattern" => {
                    let (ptr, n, third) = (
                        arg::<u64>(params, 0),
                        arg::<u32>(params, 1),
                        arg::<u32>(params, 2),
                    );
                    let buf = m.get_mut(&ptr).ok_or(ERROR_ILLEGAL_ADDRESS)?;
                    let n = n as usize;
                    if buf.len() < n * 4 {
                        return Err(ERROR_ILLEGAL_ADDRESS);
                    }
                    let mut out = vec![0u32; n];
                    if function.name.ends_with("mac") {
                        kernels::mac(&mut out, third);
                    } else {
                        kernels::pattern(&mut out, third);
                    }
                    if faults.wrong && n > 0 {
                        out[n / 2] ^= 1 << 7;
                    }
                    put_words(&mut buf[..n * 4], &out);
                    Ok(())
                }
                "runwarden_canary_matmul" => {
                    let (a, b, c) = (
                        arg::<u64>(params, 0),
                        arg::<u64>(params, 1),
                        arg::<u64>(params, 2),
                    );
                    let n = arg::<u32>(params, 3) as usize;
                    let read = |p: u64, m: &HashMap<u64, Vec<u8>>| -> Result<Vec<f32>, CuResult> {
                        let buf = m.get(&p).ok_or(ERROR_ILLEGAL_ADDRESS)?;
                        if buf.len() < n * n * 4 {
                            return Err(ERROR_ILLEGAL_ADDRESS);
                        }
                        Ok(buf[..n * n * 4]
                            .chunks_exact(4)
                            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
                            .collect())
                    };
                    let (x, y) = (read(a, m)?, read(b, m)?);
                    let mut z = vec![0f32; n * n];
                    kernels::matmul(&x, &y, &mut z, n);
                    if faults.wrong && n > 0 {
                        z[0] += 1.0;
                    }
                    let out = m.get_mut(&c).ok_or(ERROR_ILLEGAL_ADDRESS)?;
                    if out.len() < n * n * 4 {
                        return Err(ERROR_ILLEGAL_ADDRESS);
                    }
                    for (chunk, v) in out.chunks_exact_mut(4).zip(&z) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                    Ok(())
                }
                _ => Err(ERROR_LAUNCH_FAILED),
            }
        });
        ran
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CuResult, name: *mut *const c_char) -> CuResult {
    if name.is_null() {
        return ERROR_INVALID_VALUE;
    }
    *name = error_name(error).as_ptr();
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CuResult, text: *mut *const c_char) -> CuResult {
    cuGetErrorName(error, text)
}

fn error_name(error: CuResult) -> &'static CStr {
    match error {
        SUCCESS => c"CUDA_SUCCESS",
        ERROR_INVALID_VALUE => c"CUDA_ERROR_INVALID_VALUE",
        ERROR_OUT_OF_MEMORY => c"CUDA_ERROR_OUT_OF_MEMORY",
        ERROR_NOT_INITIALIZED => c"CUDA_ERROR_NOT_INITIALIZED",
        46 => c"CUDA_ERROR_DEVICES_UNAVAILABLE",
        ERROR_NO_DEVICE => c"CUDA_ERROR_NO_DEVICE",
        ERROR_INVALID_DEVICE => c"CUDA_ERROR_INVALID_DEVICE",
        ERROR_INVALID_IMAGE => c"CUDA_ERROR_INVALID_IMAGE",
        ERROR_INVALID_CONTEXT => c"CUDA_ERROR_INVALID_CONTEXT",
        214 => c"CUDA_ERROR_ECC_UNCORRECTABLE",
        ERROR_NOT_FOUND => c"CUDA_ERROR_NOT_FOUND",
        ERROR_ILLEGAL_ADDRESS => c"CUDA_ERROR_ILLEGAL_ADDRESS",
        714 => c"CUDA_ERROR_HARDWARE_STACK_ERROR",
        715 => c"CUDA_ERROR_ILLEGAL_INSTRUCTION",
        ERROR_LAUNCH_FAILED => c"CUDA_ERROR_LAUNCH_FAILED",
        800 => c"CUDA_ERROR_NOT_PERMITTED",
        _ => c"CUDA_ERROR_UNKNOWN",
    }
}

/// `cuGetProcAddress_v2`: how CUDA's own Python bindings (cuda-bindings) find every entry
/// point, by its base name; the fake answers for the ones it has, in their newest version.
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *const c_void,
    _cuda_version: c_int,
    _flags: u64,
    status: *mut c_int,
) -> CuResult {
    if symbol.is_null() || pfn.is_null() {
        return ERROR_INVALID_VALUE;
    }
    let name = CStr::from_ptr(symbol).to_string_lossy();
    let found: Option<*const c_void> = match name.as_ref() {
        "cuInit" => Some(cuInit as *const c_void),
        "cuDriverGetVersion" => Some(cuDriverGetVersion as *const c_void),
        "cuDeviceGetCount" => Some(cuDeviceGetCount as *const c_void),
        "cuDeviceGet" => Some(cuDeviceGet as *const c_void),
        "cuDeviceGetName" => Some(cuDeviceGetName as *const c_void),
        "cuDeviceGetUuid" => Some(cuDeviceGetUuid_v2 as *const c_void),
        "cuCtxCreate" => Some(cuCtxCreate_v2 as *const c_void),
        "cuCtxDestroy" => Some(cuCtxDestroy_v2 as *const c_void),
        "cuCtxSetCurrent" => Some(cuCtxSetCurrent as *const c_void),
        "cuCtxSynchronize" => Some(cuCtxSynchronize as *const c_void),
        "cuMemGetInfo" => Some(cuMemGetInfo_v2 as *const c_void),
        "cuModuleLoadData" => Some(cuModuleLoadData as *const c_void),
        "cuModuleUnload" => Some(cuModuleUnload as *const c_void),
        "cuModuleGetFunction" => Some(cuModuleGetFunction as *const c_void),
        "cuMemAlloc" => Some(cuMemAlloc_v2 as *const c_void),
        "cuMemFree" => Some(cuMemFree_v2 as *const c_void),
        "cuMemcpyHtoD" => Some(cuMemcpyHtoD_v2 as *const c_void),
        "cuMemcpyDtoH" => Some(cuMemcpyDtoH_v2 as *const c_void),
        "cuLaunchKernel" => Some(cuLaunchKernel as *const c_void),
        "cuGetErrorName" => Some(cuGetErrorName as *const c_void),
        "cuGetErrorString" => Some(cuGetErrorString as *const c_void),
        "cuGetProcAddress" => Some(cuGetProcAddress_v2 as *const c_void),
        _ => None,
    };
    // CU_GET_PROC_ADDRESS_SUCCESS (0), _SYMBOL_NOT_FOUND (1).
    if !status.is_null() {
        *status = c_int::from(found.is_none());
    }
    *pfn = found.unwrap_or(std::ptr::null());
    if found.is_some() {
        SUCCESS
    } else {
        ERROR_NOT_FOUND
    }
}
