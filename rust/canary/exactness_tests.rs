//! The known answers stay exact (G7): each kernel's expected result computed two ways, by the
//! canary's CPU reference (`known_answer`) and by the fake driver's (`fake_kernels`, the file
//! rust/fake-cuda/src/kernels.rs), must agree bit for bit; and each kernel's PTX uses only the
//! operations the reference models (u32 wrap-around, one fused multiply-add rounded to nearest).

use std::collections::BTreeSet;

use super::fake_kernels;
use super::known_answer::{self, matrices, MAC_ROUNDS, MAC_WORDS, MATMUL_N, PATTERN_WORDS, PTX};

/// A kernel's instructions (mnemonics, guards dropped), comments and declarations left out.
fn instructions(kernel: &str) -> Vec<(String, String)> {
    let start = PTX
        .find(&format!(".entry {kernel}("))
        .unwrap_or_else(|| panic!("{kernel} is not in the PTX"));
    let rest = &PTX[start..];
    let end = rest[1..]
        .find(".visible .entry")
        .map_or(rest.len(), |i| i + 1);
    rest[..end]
        .lines()
        .map(|line| line.split("//").next().unwrap_or("").trim())
        .filter(|line| line.ends_with(';') && !line.starts_with('.'))
        .map(|line| {
            let line = line.trim_end_matches(';');
            let line = match line.strip_prefix('@') {
                Some(guarded) => guarded.split_once(' ').map_or("", |(_, op)| op),
                None => line,
            };
            let (op, operands) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (op.to_owned(), operands.trim().to_owned())
        })
        .collect()
}

fn mnemonics(kernel: &str) -> BTreeSet<String> {
    instructions(kernel).into_iter().map(|(op, _)| op).collect()
}

fn set(ops: &[&str]) -> BTreeSet<String> {
    ops.iter().map(|s| (*s).to_owned()).collect()
}

/// Loads, stores, moves, branches and the index arithmetic every kernel has.
const PLUMBING: [&str; 12] = [
    "ld.param.u64",
    "ld.param.u32",
    "mov.u32",
    "mad.lo.u32",
    "setp.ge.u32",
    "bra",
    "cvta.to.global.u64",
    "mul.wide.u32",
    "add.u64",
    "ret",
    "bra.uni",
    "add.u32",
];

#[test]
fn each_kernel_uses_only_the_operations_its_reference_models() {
    // A new instruction in a kernel fails here: look at what it computes, and make the
    // reference (known_answer) and the fake (rust/fake-cuda) model it before adding it.
    let mut mac = set(&PLUMBING);
    mac.extend(set(&["mul.lo.u32", "st.global.u32"]));
    assert_eq!(mnemonics("runwarden_canary_mac"), mac);
    let ops = instructions("runwarden_canary_mac");
    assert!(ops.contains(&("mul.lo.u32".into(), "%r7, %r6, 0x9E3779B1".into())));
    assert!(ops.contains(&("mad.lo.u32".into(), "%r7, %r7, 1664525, 1013904223".into())));

    let mut pattern = set(&PLUMBING);
    pattern.retain(|op| op != "bra.uni" && op != "add.u32"); // no loop
    pattern.extend(set(&["mul.lo.u32", "xor.b32", "st.global.u32"]));
    assert_eq!(mnemonics("runwarden_canary_pattern"), pattern);
    let ops = instructions("runwarden_canary_pattern");
    assert!(ops.contains(&("mul.lo.u32".into(), "%r7, %r6, 0x9E3779B1".into())));

    let mut matmul = set(&PLUMBING);
    matmul.extend(set(&[
        "or.pred",
        "mul.lo.u32",
        "mov.f32",
        "ld.global.f32",
        "fma.rn.f32",
        "st.global.f32",
    ]));
    assert_eq!(mnemonics("runwarden_canary_matmul"), matmul);
    let ops = instructions("runwarden_canary_matmul");
    // The sum starts at +0 and is only ever changed by the fused multiply-add.
    assert!(ops.contains(&("mov.f32".into(), "%f1, 0f00000000".into())));
    let writes_sum: Vec<_> = ops.iter().filter(|(_, o)| o.starts_with("%f1,")).collect();
    assert_eq!(writes_sum.len(), 2, "{writes_sum:?}");
}

#[test]
fn the_reference_and_the_fake_driver_agree_bit_for_bit() {
    for (n, rounds) in [(MAC_WORDS, MAC_ROUNDS), (257, 0), (33, 1), (5, 100_000)] {
        let mut fake = vec![0u32; n as usize];
        fake_kernels::mac(&mut fake, rounds);
        assert_eq!(
            known_answer::mac(n, rounds),
            fake,
            "mac n={n} rounds={rounds}"
        );
    }
    for seed in [0, 1, 0x5EED_0001, u32::MAX] {
        let mut fake = vec![0u32; PATTERN_WORDS as usize];
        fake_kernels::pattern(&mut fake, seed);
        assert_eq!(
            known_answer::pattern(PATTERN_WORDS, seed),
            fake,
            "seed {seed}"
        );
    }
    for n in [MATMUL_N, 1, 3, 17] {
        let (a, b) = matrices(n);
        let n = n as usize;
        let mut fake = vec![0f32; n * n];
        fake_kernels::matmul(&a, &b, &mut fake, n);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&known_answer::matmul(&a, &b, n)), bits(&fake), "n={n}");
    }
    // Known values, so that both cannot drift together: x = 1 × 0x9E3779B1, then one step.
    assert_eq!(
        known_answer::mac(2, 1)[1],
        0x9E37_79B1u32
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223)
    );
    assert_eq!(known_answer::pattern(2, 0xFF)[1], 0x9E37_794E);
}

#[test]
fn the_matrix_product_is_exact_whatever_the_rounding_or_the_order() {
    // Every product and partial sum is an integer below 2^24, so a GPU that fused or did not,
    // or added in another order, gives the very same bits: the answer is the true one.
    let (a, b) = matrices(MATMUL_N);
    let n = MATMUL_N as usize;
    let fused = known_answer::matmul(&a, &b, n);
    for i in 0..n {
        for j in 0..n {
            let terms: Vec<f32> = (0..n).map(|k| a[i * n + k] * b[k * n + j]).collect();
            let forward: f32 = terms.iter().sum();
            let backward: f32 = terms.iter().rev().sum();
            let exact: i64 = (0..n)
                .map(|k| a[i * n + k] as i64 * b[k * n + j] as i64)
                .sum();
            let got = fused[i * n + j];
            assert_eq!(got.to_bits(), forward.to_bits());
            assert_eq!(got.to_bits(), backward.to_bits());
            assert_eq!(got as i64, exact);
        }
    }
}
