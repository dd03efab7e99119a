//! A fake `libcuda.so.1` for the compute canary (SPEC G8), driven by the fake NVML driver's
//! state file (`RUNWARDEN_FAKE_NVML_STATE`), so one file describes a fake GPU to both.
//!
//! It answers the part of the CUDA driver API the canary uses: devices (count, name, UUID),
//! contexts, a PTX module's functions, device memory, copies, kernel launches and
//! synchronisation. A PTX module is not compiled: its `.entry` names are looked up, and the
//! canary's kernels (`runwarden_canary_mac`, `_matmul`, `_pattern`) are computed on the CPU,
//! so a right answer is a real answer. The devices it shows follow the process's
//! `CUDA_VISIBLE_DEVICES`, MIG instances (the state's `mig_uuids`) included: see `visible`.
//! Each GPU of the state may carry a `cuda` object of faults:
//!
//! ```json
//! {"gpus": [{"cuda": {"wrong": true,          // one bit of every kernel's output flipped
//!                     "hang_seconds": 30,     // cuCtxSynchronize blocks this long
//!                     "error": 214,           // launches and synchronisation return it
//!                     "oom": true}}]}         // cuMemAlloc returns CUDA_ERROR_OUT_OF_MEMORY
//! ```
//!
//! The kernels' contract (the canary computes the same on the CPU):
//! - `runwarden_canary_mac(u32* out, u32 n, u32 rounds)`: for i < n, x = i × 2654435761, then
//!   `rounds` times x = x × 1664525 + 1013904223 (wrapping u32); out[i] = x.
//! - `runwarden_canary_matmul(f32* a, f32* b, f32* c, u32 n)`: c = a × b, n × n, row-major.
//! - `runwarden_canary_pattern(u32* buf, u32 n, u32 seed)`: buf[i] = (i × 0x9E3779B1) ^ seed.

#![allow(clippy::missing_safety_doc)] // the C API's contract is CUDA's

mod api;
mod kernels;
mod state;
mod visible;

pub use api::*;
