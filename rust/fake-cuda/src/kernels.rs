//! The canary's kernels, computed on the CPU over the fake's device memory (the contract is
//! in the crate docs). Written apart from the canary's own reference
//! (rust/canary/known_answer.rs); rust/canary/exactness_tests.rs compiles this file too and
//! checks that the two agree.

/// `runwarden_canary_mac`.
pub fn mac(out: &mut [u32], rounds: u32) {
    for (i, slot) in out.iter_mut().enumerate() {
        let mut x = (i as u32).wrapping_mul(2_654_435_761);
        for _ in 0..rounds {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        }
        *slot = x;
    }
}

/// `runwarden_canary_matmul`: c = a × b, n × n, row-major.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], n: usize) {
    for i in 0..n {
        for j in 0..n {
            // The kernel's fma.rn.f32: one rounding per step, k in order.
            let mut sum = 0.0f32;
            for k in 0..n {
                sum = a[i * n + k].mul_add(b[k * n + j], sum);
            }
            c[i * n + j] = sum;
        }
    }
}

/// `runwarden_canary_pattern`.
pub fn pattern(buf: &mut [u32], seed: u32) {
    for (i, slot) in buf.iter_mut().enumerate() {
        *slot = (i as u32).wrapping_mul(0x9E37_79B1) ^ seed;
    }
}
