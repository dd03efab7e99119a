//! The CUDA driver API, loaded at run time from `libcuda.so.1` (or `--cuda-library`), the
//! way nvml-wrapper loads NVML: no CUDA toolkit at build or run time, and the fake driver of
//! the fault kit loads through the same code.
//!
//! Hand-written over libloading rather than cudarc: cudarc's dynamic loading searches the
//! loader's path by name and takes no library path, so the fake could not be loaded the way
//! the driver is; the canary needs 17 entry points, declared here.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use libloading::Library;

pub type CuResult = c_uint;
pub type Device = c_int;
pub type DevicePtr = u64;
pub type Context = *mut c_void;
pub type Module = *mut c_void;
pub type Function = *mut c_void;

/// A driver call that did not succeed: which call, and CUDA's code and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaError {
    pub call: &'static str,
    pub code: CuResult,
    pub name: String,
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.call, self.name, self.code)
    }
}

macro_rules! driver {
    ($( $field:ident : $symbol:literal => fn($($arg:ty),*) ; )*) => {
        /// The driver's entry points, and the library that holds them.
        pub struct Cuda {
            $( $field: unsafe extern "C" fn($($arg),*) -> CuResult, )*
            error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
            _library: Library,
        }

        impl Cuda {
            /// Load the driver from `path` and initialise it.
            pub fn load(path: &str) -> Result<Cuda, String> {
                // SAFETY: loading the CUDA driver runs its initialisers, as any CUDA program
                // does; the symbols are the driver API's, with the signatures declared here.
                unsafe {
                    let library = Library::new(path).map_err(|e| e.to_string())?;
                    let cuda = Cuda {
                        $( $field: *library
                            .get::<unsafe extern "C" fn($($arg),*) -> CuResult>($symbol)
                            .map_err(|e| e.to_string())?, )*
                        error_name: *library
                            .get::<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>(
                                b"cuGetErrorName\0",
                            )
                            .map_err(|e| e.to_string())?,
                        _library: library,
                    };
                    Ok(cuda)
                }
            }
        }
    };
}

driver! {
    init: b"cuInit\0" => fn(c_uint);
    device_count: b"cuDeviceGetCount\0" => fn(*mut c_int);
    device_get: b"cuDeviceGet\0" => fn(*mut Device, c_int);
    device_uuid: b"cuDeviceGetUuid_v2\0" => fn(*mut [u8; 16], Device);
    ctx_create: b"cuCtxCreate_v2\0" => fn(*mut Context, c_uint, Device);
    ctx_destroy: b"cuCtxDestroy_v2\0" => fn(Context);
    ctx_set_current: b"cuCtxSetCurrent\0" => fn(Context);
    ctx_synchronize: b"cuCtxSynchronize\0" => fn();
    module_load: b"cuModuleLoadData\0" => fn(*mut Module, *const c_void);
    module_unload: b"cuModuleUnload\0" => fn(Module);
    module_function: b"cuModuleGetFunction\0" => fn(*mut Function, Module, *const c_char);
    mem_alloc: b"cuMemAlloc_v2\0" => fn(*mut DevicePtr, usize);
    mem_free: b"cuMemFree_v2\0" => fn(DevicePtr);
    copy_to_device: b"cuMemcpyHtoD_v2\0" => fn(DevicePtr, *const c_void, usize);
    copy_to_host: b"cuMemcpyDtoH_v2\0" => fn(*mut c_void, DevicePtr, usize);
    launch: b"cuLaunchKernel\0" => fn(
        Function, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint,
        *mut c_void, *mut *mut c_void, *mut *mut c_void
    );
}

impl Cuda {
    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string, or nothing.
        let found = unsafe { (self.error_name)(code, &mut name) } == 0 && !name.is_null();
        let name = if found {
            // SAFETY: a NUL-terminated static string of the driver's.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("CUDA error {code}")
        };
        Err(CudaError { call, code, name })
    }

    pub fn initialise(&self) -> Result<(), CudaError> {
        // SAFETY: cuInit with flags 0, as documented.
        self.check("cuInit", unsafe { (self.init)(0) })
    }

    /// Every device's ordinal and UUID.
    pub fn devices(&self) -> Result<Vec<(Device, [u8; 16])>, CudaError> {
        let mut count = 0;
        // SAFETY: out-pointers to locals.
        unsafe {
            self.check("cuDeviceGetCount", (self.device_count)(&mut count))?;
            (0..count)
                .map(|ordinal| {
                    let mut device = 0;
                    self.check("cuDeviceGet", (self.device_get)(&mut device, ordinal))?;
                    let mut uuid = [0u8; 16];
                    self.check("cuDeviceGetUuid_v2", (self.device_uuid)(&mut uuid, device))?;
                    Ok((device, uuid))
                })
                .collect()
        }
    }

    /// A context of its own on `device`, current on this thread until dropped.
    pub fn context(&self, device: Device) -> Result<Ctx<'_>, CudaError> {
        let mut ctx: Context = std::ptr::null_mut();
        // SAFETY: an out-pointer to a local.
        self.check("cuCtxCreate_v2", unsafe {
            (self.ctx_create)(&mut ctx, 0, device)
        })?;
        Ok(Ctx { cuda: self, ctx })
    }
}

/// A context (and what was made in it), destroyed when dropped.
pub struct Ctx<'a> {
    cuda: &'a Cuda,
    ctx: Context,
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        // SAFETY: the context this value made; destroying it frees its memory and modules.
        unsafe {
            (self.cuda.ctx_destroy)(self.ctx);
            (self.cuda.ctx_set_current)(std::ptr::null_mut());
        }
    }
}

/// Device memory, freed when dropped.
pub struct Buffer<'a> {
    cuda: &'a Cuda,
    pub ptr: DevicePtr,
    pub bytes: usize,
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        // SAFETY: memory this value allocated.
        unsafe { (self.cuda.mem_free)(self.ptr) };
    }
}

/// A loaded module, unloaded when dropped.
pub struct Loaded<'a> {
    cuda: &'a Cuda,
    module: Module,
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        // SAFETY: the module this value loaded.
        unsafe { (self.cuda.module_unload)(self.module) };
    }
}

/// A kernel argument: a device pointer or a 32-bit number.
pub enum Arg {
    Ptr(DevicePtr),
    U32(u32),
}

impl Ctx<'_> {
    /// Load PTX text (NUL-terminated) and compile it for this device.
    pub fn load(&self, ptx: &CStr) -> Result<Loaded<'_>, CudaError> {
        let mut module: Module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image, read during the call.
        self.cuda.check("cuModuleLoadData", unsafe {
            (self.cuda.module_load)(&mut module, ptx.as_ptr().cast())
        })?;
        Ok(Loaded {
            cuda: self.cuda,
            module,
        })
    }

    pub fn alloc(&self, bytes: usize) -> Result<Buffer<'_>, CudaError> {
        let mut ptr = 0;
        // SAFETY: an out-pointer to a local.
        self.cuda.check("cuMemAlloc_v2", unsafe {
            (self.cuda.mem_alloc)(&mut ptr, bytes)
        })?;
        Ok(Buffer {
            cuda: self.cuda,
            ptr,
            bytes,
        })
    }

    pub fn upload(&self, to: &Buffer<'_>, bytes: &[u8]) -> Result<(), CudaError> {
        assert!(bytes.len() <= to.bytes);
        // SAFETY: `bytes` is readable for its length; the buffer holds at least as much.
        self.cuda.check("cuMemcpyHtoD_v2", unsafe {
            (self.cuda.copy_to_device)(to.ptr, bytes.as_ptr().cast(), bytes.len())
        })
    }

    pub fn download(&self, from: &Buffer<'_>) -> Result<Vec<u8>, CudaError> {
        let mut out = vec![0u8; from.bytes];
        // SAFETY: `out` is writable for the buffer's length.
        self.cuda.check("cuMemcpyDtoH_v2", unsafe {
            (self.cuda.copy_to_host)(out.as_mut_ptr().cast(), from.ptr, from.bytes)
        })?;
        Ok(out)
    }

    /// Launch `name` of `module` on a grid of blocks, and wait for it.
    pub fn run(
        &self,
        module: &Loaded<'_>,
        name: &CStr,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let cuda = self.cuda;
        let mut function: Function = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a NUL-terminated name.
        cuda.check("cuModuleGetFunction", unsafe {
            (cuda.module_function)(&mut function, module.module, name.as_ptr())
        })?;
        let mut values: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(p) => *p,
                Arg::U32(n) => u64::from(*n),
            })
            .collect();
        // CUDA reads each argument from its address, with the parameter's size: a u32 is the
        // first 4 bytes of its u64 slot (little-endian).
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| std::ptr::from_mut(v).cast())
            .collect();
        // SAFETY: `params` points at live values, one per kernel parameter.
        cuda.check("cuLaunchKernel", unsafe {
            (cuda.launch)(
                function,
                grid.0,
                grid.1,
                1,
                block.0,
                block.1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        // SAFETY: no arguments.
        cuda.check("cuCtxSynchronize", unsafe { (cuda.ctx_synchronize)() })
    }
}
