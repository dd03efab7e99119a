//! NVML return codes (values from `nvml.h`) and the texts `nvmlErrorString` gives for them.

use std::ffi::c_char;

/// `nvmlReturn_t`: a C enum, so an `unsigned int` on every platform NVML ships for.
pub type Ret = u32;

pub const SUCCESS: Ret = 0;
pub const ERROR_UNINITIALIZED: Ret = 1;
pub const ERROR_INVALID_ARGUMENT: Ret = 2;
pub const ERROR_NOT_SUPPORTED: Ret = 3;
pub const ERROR_NOT_FOUND: Ret = 6;
pub const ERROR_INSUFFICIENT_SIZE: Ret = 7;
pub const ERROR_TIMEOUT: Ret = 10;
pub const ERROR_GPU_IS_LOST: Ret = 15;
pub const ERROR_ARGUMENT_VERSION_MISMATCH: Ret = 25;

/// The text for `code` as a static NUL-terminated string. The common codes read exactly
/// as NVIDIA's library and nvidia-ml-py word them; unknown codes read "Unknown Error",
/// as the real library does.
pub fn error_string(code: Ret) -> *const c_char {
    let text: &'static [u8] = match code {
        0 => b"Success\0",
        1 => b"Uninitialized\0",
        2 => b"Invalid Argument\0",
        3 => b"Not Supported\0",
        4 => b"Insufficient Permissions\0",
        5 => b"Already Initialized\0",
        6 => b"Not Found\0",
        7 => b"Insufficient Size\0",
        8 => b"Insufficient External Power\0",
        9 => b"Driver Not Loaded\0",
        10 => b"Timeout\0",
        11 => b"Interrupt Request Issue\0",
        12 => b"NVML Shared Library Not Found\0",
        13 => b"Function Not Found\0",
        14 => b"Corrupted infoROM\0",
        15 => b"GPU is lost\0",
        16 => b"GPU requires restart\0",
        17 => b"The operating system has blocked the request.\0",
        18 => b"RM has detected an NVML/RM version mismatch.\0",
        19 => b"In use by another client\0",
        20 => b"Insufficient Memory\0",
        21 => b"No data\0",
        22 => b"The requested vgpu operation is not available on target device, because ECC is enabled\0",
        23 => b"Ran out of critical resources, other than memory\0",
        24 => b"Frequency not supported\0",
        25 => b"Argument version mismatch\0",
        26 => b"Deprecated\0",
        27 => b"Not Ready\0",
        28 => b"GPU not found\0",
        29 => b"Invalid state\0",
        30 => b"Reset type not supported\0",
        _ => b"Unknown Error\0",
    };
    text.as_ptr().cast()
}
