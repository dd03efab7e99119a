//! One run of the known-answer test on one GPU (SPEC G7), in a context of its own: an exact
//! integer multiply-accumulate chain, a small f32 matrix product whose exact answer is
//! representable, and a pattern over 4 MiB of device memory, each compared with the CPU's.

use std::ffi::CStr;

use super::driver::{Arg, Cuda, CudaError, Device};

/// The kernels, compiled by the driver for whatever GPU it finds.
pub(crate) const PTX: &str = concat!(include_str!("kernels.ptx"), "\0");

pub(crate) const MAC_WORDS: u32 = 64 * 1024;
pub(crate) const MAC_ROUNDS: u32 = 64;
pub(crate) const MATMUL_N: u32 = 64;
pub(crate) const PATTERN_WORDS: u32 = 1024 * 1024; // 4 MiB
const BLOCK: u32 = 256;

/// What one run found, short of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A kernel's answer differs from the CPU's: silent data corruption.
    Mismatch(String),
    /// A driver call failed.
    Cuda(CudaError),
}

impl From<CudaError> for Failure {
    fn from(e: CudaError) -> Failure {
        Failure::Cuda(e)
    }
}

/// The CPU's answer to `runwarden_canary_mac`: u32 arithmetic that wraps, as `mul.lo.u32`
/// and `mad.lo.u32` do.
pub fn mac(n: u32, rounds: u32) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B1);
            for _ in 0..rounds {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            }
            x
        })
        .collect()
}

/// Inputs of the matrix product: small integers, so every partial sum is exact in f32.
pub(crate) fn matrices(n: u32) -> (Vec<f32>, Vec<f32>) {
    let a = (0..n * n).map(|i| ((i * 7) % 17) as f32 - 8.0).collect();
    let b = (0..n * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
    (a, b)
}

/// The CPU's answer to `runwarden_canary_matmul`: from +0, one fused multiply-add per k in
/// order, rounded to nearest even, as the kernel's `fma.rn.f32` loop does.
pub fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = (0..n).fold(0.0, |sum, k| a[i * n + k].mul_add(b[k * n + j], sum));
        }
    }
    c
}

/// The CPU's answer to `runwarden_canary_pattern`: a wrapping u32 product, then xor.
pub fn pattern(n: u32, seed: u32) -> Vec<u32> {
    (0..n).map(|i| i.wrapping_mul(0x9E37_79B1) ^ seed).collect()
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn floats_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The first difference between what came back and what was expected, said for a person.
fn compare<T: PartialEq + std::fmt::Debug>(
    kernel: &str,
    got: &[T],
    want: &[T],
) -> Result<(), Failure> {
    let wrong = got.iter().zip(want).filter(|(g, w)| g != w).count();
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(Failure::Mismatch(format!(
            "{kernel}: {wrong} of {} values differ, the first at {i}: got {:?}, expected {:?}",
            want.len(),
            got[i],
            want[i]
        ))),
    }
}

fn name(text: &'static str) -> &'static CStr {
    CStr::from_bytes_until_nul(text.as_bytes()).expect("a NUL-terminated name")
}

/// Run every kernel once on `device`; `seed` varies the memory pattern between runs.
pub fn run(cuda: &Cuda, device: Device, seed: u32) -> Result<(), Failure> {
    let ctx = cuda.context(device)?;
    let module = ctx.load(name(PTX))?;

    let out = ctx.alloc(MAC_WORDS as usize * 4)?;
    ctx.run(
        &module,
        name("runwarden_canary_mac\0"),
        (MAC_WORDS.div_ceil(BLOCK), 1),
        (BLOCK, 1),
        &[Arg::Ptr(out.ptr), Arg::U32(MAC_WORDS), Arg::U32(MAC_ROUNDS)],
    )?;
    compare(
        "multiply-accumulate",
        &words(&ctx.download(&out)?),
        &mac(MAC_WORDS, MAC_ROUNDS),
    )?;

    let n = MATMUL_N as usize;
    let (a, b) = matrices(MATMUL_N);
    let (da, db, dc) = (
        ctx.alloc(n * n * 4)?,
        ctx.alloc(n * n * 4)?,
        ctx.alloc(n * n * 4)?,
    );
    ctx.upload(&da, &floats_bytes(&a))?;
    ctx.upload(&db, &floats_bytes(&b))?;
    ctx.run(
        &module,
        name("runwarden_canary_matmul\0"),
        (MATMUL_N.div_ceil(16), MATMUL_N.div_ceil(16)),
        (16, 16),
        &[
            Arg::Ptr(da.ptr),
            Arg::Ptr(db.ptr),
            Arg::Ptr(dc.ptr),
            Arg::U32(MATMUL_N),
        ],
    )?;
    let got: Vec<f32> = ctx
        .download(&dc)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    compare("matrix product", &got, &matmul(&a, &b, n))?;

    let buf = ctx.alloc(PATTERN_WORDS as usize * 4)?;
    ctx.run(
        &module,
        name("runwarden_canary_pattern\0"),
        (PATTERN_WORDS.div_ceil(BLOCK), 1),
        (BLOCK, 1),
        &[Arg::Ptr(buf.ptr), Arg::U32(PATTERN_WORDS), Arg::U32(seed)],
    )?;
    compare(
        "memory pattern",
        &words(&ctx.download(&buf)?),
        &pattern(PATTERN_WORDS, seed),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_product_is_exact_in_f32() {
        let (a, b) = matrices(MATMUL_N);
        let n = MATMUL_N as usize;
        let c = matmul(&a, &b, n);
        // Every product and partial sum is an integer below 2^24: f32 holds it exactly,
        // whatever order a GPU adds in.
        let bound: f32 = (0..n).map(|_| 8.0 * 6.0).sum();
        assert!(bound < (1 << 24) as f32);
        assert!(c.iter().all(|v| v.fract() == 0.0 && v.abs() <= bound));
    }

    #[test]
    fn the_ptx_names_every_kernel() {
        for kernel in [
            "runwarden_canary_mac",
            "runwarden_canary_matmul",
            "runwarden_canary_pattern",
        ] {
            assert!(PTX.contains(&format!(".entry {kernel}(")), "{kernel}");
        }
    }
}
