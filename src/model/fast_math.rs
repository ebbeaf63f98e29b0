//! Element-wise math for the CPU f32 kernels, written so the compiler vectorises it: a branch-free
//! `exp`, the error function and the exact GELU built on it, and the dispatch that compiles a
//! kernel's loops a second time for AVX2 and picks that copy at run time where the CPU has it.
//!
//! NOTE: the crate is built for the baseline x86-64 (SSE2, 4 lanes); the `gemm` crate picks its
//! AVX2/AVX-512 kernels at run time, and so do the loops here (8 lanes). No fused multiply-add
//! is used, so both copies round alike and give the same bits.
//!
//! libm's `erff` (what candle's `gelu_erf` calls) cannot be vectorised and was ~13% of an
//! all-MiniLM run; [`erf`] here is Abramowitz & Stegun's 7.1.26 (|error| ≤ 1.5e-7, ~5e-7 in f32) over a
//! polynomial `exp` (relative error ~2e-7), so GELU is within ~1e-6 of the exact value for
//! |x| ≤ 10 (checked against libm below).

/// `e^y` for `y` in [-87, 88]: `y = n·ln2 + r`, `e^r` by its Taylor series to r⁶ on
/// |r| ≤ ln2/2, times 2ⁿ from the exponent bits.
#[inline(always)]
pub fn exp(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (Cody & Waite), so `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer in SSE2 as well.
    const ROUND: f32 = 12_582_912.0;
    let y = y.clamp(-87.0, 88.0);
    let n = (y * LOG2E + ROUND) - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// The error function (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly =
        t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = 1.0 - poly * exp(-a * a);
    e.copysign(x)
}

/// The exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))` (transformers' "gelu").
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The tanh approximation of GELU, `x/2 · (1 + tanh(u))` with `u = √(2/π)·(x + 0.044715·x³)`
/// (transformers' "gelu_pytorch_tanh", candle's `gelu`), written as `x / (1 + e^(−2u))` over
/// [`exp`]: libm's `tanhf` (through `expm1f`) was ~19% of an EmbeddingGemma-shaped run.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// Whether the CPU runs AVX2 (asked once; the answer is cached by the standard library).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU runs AVX-512 (F, BW and VL; asked once, cached by the standard library).
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name($args) -> $ret` that runs `$body` compiled for AVX2 where the CPU has it, and
/// as built otherwise. `$body` should be plain loops (and calls to `#[inline(always)]` helpers).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::model::fast_math::has_avx512() {
                    // SAFETY: the CPU has just been seen to support these AVX-512 subsets.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::model::fast_math::has_avx2() {
                    // SAFETY: the CPU has just been seen to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_erf_and_gelu_are_close_to_libms() {
        let (mut worst_exp, mut worst_erf, mut worst_gelu) = (0f32, 0f32, 0f32);
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4;
            worst_erf = worst_erf.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
            let libm_gelu =
                0.5 * x * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
            worst_gelu = worst_gelu.max((gelu(x) - libm_gelu).abs());
            let y = x * 8.0;
            worst_exp = worst_exp.max(((exp(y) - y.exp()) / y.exp()).abs());
        }
        assert!(worst_exp < 5e-7, "exp: relative error {worst_exp}");
        let mut worst_gelu_tanh = 0f32;
        for i in -100_000..=100_000 {
            let x = i as f32 * 2e-4;
            let libm = 0.5
                * x
                * (1.0 + ((2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            worst_gelu_tanh = worst_gelu_tanh.max((gelu_tanh(x) - libm).abs() / x.abs().max(1.0));
        }
        assert!(worst_gelu_tanh < 1e-6, "gelu_tanh: error {worst_gelu_tanh}");
        assert!(gelu_tanh(-100.0).abs() < 1e-6 && gelu_tanh(100.0) == 100.0 && gelu_tanh(0.0) == 0.0);
        assert!(worst_erf < 1e-6, "erf: error {worst_erf}");
        assert!(worst_gelu < 2e-6, "gelu: error {worst_gelu}");
        assert!(erf(0.0).abs() < 1e-6);
        assert!(
            (erf(-30.0) + 1.0).abs() < 1e-7 && gelu(-30.0).abs() < 1e-6 && (gelu(30.0) - 30.0).abs() < 1e-5
        );
    }
}
