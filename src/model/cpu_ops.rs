//! Fused element-wise steps for the CPU f32 path, run in parallel over tokens.
//!
//! NOTE: candle runs an element-wise op on a strided view (the gate half of the fused gate/up
//! projection, the q/k slices of the fused qkv projection) on one thread, and `rope_thd` splits
//! its work per batch entry, which is one for packed tokens. On two cores those serial passes
//! left one core idle for ~13% of a run. Each op here is one parallel pass with the same
//! arithmetic as the candle ops it replaces (the encoders' bias + activation, and bias +
//! residual + LayerNorm, which candle would run as three or four passes).

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::{self, multiversion};

/// The f32 values a CPU custom op reads, or an error naming `op` when they are not f32 or not
/// contiguous.
pub(super) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&data[start..end])
}

/// `silu(gate) * up` for `x = [gate | up]` of shape `[tokens, 2 * intermediate]` (f32, CPU):
/// `[tokens, intermediate]`.
pub fn swiglu(x: &Tensor, intermediate: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Glu { intermediate, act: GluAct::Silu })
}

/// ModernBERT's `gelu(input) * gate` for `x = [input | gate]` (exact GELU), as [`swiglu`].
pub fn geglu(x: &Tensor, intermediate: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Glu { intermediate, act: GluAct::Gelu })
}

/// Gemma's `gelu_tanh(gate) * up` for `x = [gate | up]`, as [`swiglu`].
pub fn geglu_tanh(x: &Tensor, intermediate: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Glu { intermediate, act: GluAct::GeluTanh })
}

#[derive(Clone, Copy)]
enum GluAct {
    Silu,
    Gelu,
    GeluTanh,
}

struct Glu {
    intermediate: usize,
    act: GluAct,
}

multiversion! {
    fn glu_row(o: &mut [f32], row: &[f32], act: GluAct) {
        let (gate, up) = row.split_at(o.len());
        match act {
            GluAct::Silu => {
                for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            GluAct::Gelu => {
                for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                    *o = fast_math::gelu(g) * u;
                }
            }
            GluAct::GeluTanh => {
                for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                    *o = fast_math::gelu_tanh(g) * u;
                }
            }
        }
    }
}

impl CustomOp1 for Glu {
    fn name(&self) -> &'static str {
        "glu-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (tokens, width) = layout.shape().dims2()?;
        let i = self.intermediate;
        if width != 2 * i {
            candle_core::bail!("glu-cpu: width {width} is not 2 x {i}");
        }
        let mut out = vec![0f32; tokens * i];
        let act = self.act;
        out.par_chunks_mut(i).zip(src.par_chunks(width)).for_each(|(o, row)| glu_row(o, row, act));
        Ok((CpuStorage::F32(out), Shape::from((tokens, i))))
    }
}

/// The f32 values of a CPU custom op's in-place operand, or an error naming `op`.
fn contiguous_f32_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&mut data[start..end])
}

/// `x ← act(x + bias)` in place for `x` `[tokens, width]` and `bias` `[width]` (f32, CPU), in
/// one parallel pass: the encoders' intermediate layer. `x` must be a tensor no one else holds
/// (a fresh matmul output); it is returned.
pub fn bias_act_in_place(x: Tensor, bias: Option<&Tensor>, act: super::config::Activation) -> Result<Tensor> {
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    x.inplace_op1(&BiasAct { bias, act })?;
    Ok(x)
}

struct BiasAct {
    bias: Option<Vec<f32>>,
    act: super::config::Activation,
}

multiversion! {
    fn bias_act_row(row: &mut [f32], bias: Option<&[f32]>, act: super::config::Activation) {
        use super::config::Activation as A;
        if let Some(b) = bias {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        match act {
            A::Identity => {}
            A::Tanh => row.iter_mut().for_each(|x| *x = x.tanh()),
            A::Relu => row.iter_mut().for_each(|x| *x = x.max(0.0)),
            A::Gelu => row.iter_mut().for_each(|x| *x = fast_math::gelu(*x)),
            A::GeluTanh => row.iter_mut().for_each(|x| *x = fast_math::gelu_tanh(*x)),
            A::Silu => row.iter_mut().for_each(|x| *x /= 1.0 + fast_math::exp(-*x)),
            A::Sigmoid => row.iter_mut().for_each(|x| *x = 1.0 / (1.0 + fast_math::exp(-*x))),
        }
    }
}

impl InplaceOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act-cpu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (_, width) = layout.shape().dims2()?;
        if self.bias.as_ref().is_some_and(|b| b.len() != width) {
            candle_core::bail!("bias-act-cpu: bias does not match width {width}");
        }
        let data = contiguous_f32_mut(storage, layout, self.name())?;
        let (bias, act) = (self.bias.as_deref(), self.act);
        data.par_chunks_mut(width).for_each(|row| bias_act_row(row, bias, act));
        Ok(())
    }
}

/// `x ← LayerNorm(x + bias + residual)` in place over the last dimension of `x` `[tokens,
/// width]` (f32, CPU), with `weight` and an optional `beta` `[width]`; `bias` and `residual`
/// are optional. One parallel pass; mean and variance in two passes over the row, as torch
/// computes them. `x` must be a tensor no one else holds (a fresh matmul output); it is returned.
pub fn layer_norm_in_place(
    x: Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    weight: &Tensor,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let vec = |t: Option<&Tensor>| t.map(|t| t.to_vec1::<f32>()).transpose();
    let op =
        LayerNormOp { bias: vec(bias)?, weight: weight.to_vec1::<f32>()?, beta: vec(beta)?, eps: eps as f32 };
    match residual {
        Some(r) => x.inplace_op2(&r.contiguous()?, &op)?,
        None => x.inplace_op1(&op)?,
    }
    Ok(x)
}

struct LayerNormOp {
    bias: Option<Vec<f32>>,
    weight: Vec<f32>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

multiversion! {
    fn layer_norm_row(row: &mut [f32], residual: Option<&[f32]>, op: &LayerNormOp) {
        if let Some(b) = &op.bias {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        if let Some(r) = residual {
            row.iter_mut().zip(r).for_each(|(x, r)| *x += r);
        }
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + op.eps).sqrt();
        match &op.beta {
            Some(beta) => {
                for ((x, w), b) in row.iter_mut().zip(&op.weight).zip(beta) {
                    *x = (*x - mean) * inv * w + b;
                }
            }
            None => {
                for (x, w) in row.iter_mut().zip(&op.weight) {
                    *x = (*x - mean) * inv * w;
                }
            }
        }
    }
}

impl LayerNormOp {
    fn run(&self, data: &mut [f32], residual: Option<&[f32]>, layout: &Layout) -> Result<()> {
        let (_, width) = layout.shape().dims2()?;
        if self.weight.len() != width {
            candle_core::bail!("layer-norm-cpu: weight does not match width {width}");
        }
        data.par_chunks_mut(width)
            .enumerate()
            .for_each(|(t, row)| layer_norm_row(row, residual.map(|r| &r[t * width..][..width]), self));
        Ok(())
    }
}

impl InplaceOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-cpu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        self.run(contiguous_f32_mut(storage, layout, "layer-norm-cpu")?, None, layout)
    }
}

impl candle_core::InplaceOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-cpu"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("layer-norm-cpu: residual {:?} does not match {:?}", l2.shape(), l1.shape());
        }
        let residual = contiguous_f32(s2, l2, "layer-norm-cpu")?;
        self.run(contiguous_f32_mut(s1, l1, "layer-norm-cpu")?, Some(residual), l1)
    }
}

/// The fused projection `x = [q | k | v]` `[tokens, parts * width]` (f32, CPU), plus `bias`,
/// laid out part by part: `[parts, tokens, width]`, so each part is a contiguous view (one pass
/// instead of a bias add and a copy per part).
pub fn split_parts(x: &Tensor, bias: Option<&Tensor>, parts: usize) -> Result<Tensor> {
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    x.apply_op1_no_bwd(&SplitParts { bias, parts })
}

struct SplitParts {
    bias: Option<Vec<f32>>,
    parts: usize,
}

impl CustomOp1 for SplitParts {
    fn name(&self) -> &'static str {
        "split-parts-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (tokens, total) = layout.shape().dims2()?;
        let p = self.parts;
        if !total.is_multiple_of(p) || self.bias.as_ref().is_some_and(|b| b.len() != total) {
            candle_core::bail!("split-parts-cpu: width {total} is not {p} parts matching the bias");
        }
        let w = total / p;
        let mut out = vec![0f32; tokens * total];
        let bias = self.bias.as_deref();
        out.par_chunks_mut(tokens * w).enumerate().for_each(|(part, dest)| {
            for (t, row) in dest.chunks_exact_mut(w).enumerate() {
                let from = &src[t * total + part * w..][..w];
                match bias {
                    Some(b) => {
                        row.iter_mut().zip(from).zip(&b[part * w..]).for_each(|((o, x), b)| *o = x + b)
                    }
                    None => row.copy_from_slice(from),
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((p, tokens, w))))
    }
}

/// Rotates q and k of a packed batch in place of candle's `rope_thd`: `x` is
/// `[tokens, heads, head_dim]` (f32, CPU, contiguous), `cos`/`sin` are `[tokens, head_dim / 2]`
/// (each token's own position); halves are rotated as in transformers' `rotate_half`.
pub fn rope_packed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (tokens, heads, d) = x.dims3()?;
    let cos = cos.flatten_all()?.to_vec1::<f32>()?;
    let sin = sin.flatten_all()?.to_vec1::<f32>()?;
    if cos.len() != tokens * d / 2 || sin.len() != cos.len() {
        candle_core::bail!("rope-cpu: cos/sin do not match {tokens} tokens of head_dim {d}");
    }
    x.apply_op1_no_bwd(&RopePacked { cos, sin, heads, d })
}

struct RopePacked {
    cos: Vec<f32>,
    sin: Vec<f32>,
    heads: usize,
    d: usize,
}

impl CustomOp1 for RopePacked {
    fn name(&self) -> &'static str {
        "rope-packed-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (heads, d, half) = (self.heads, self.d, self.d / 2);
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(heads * d).zip(src.par_chunks(heads * d)).enumerate().for_each(|(t, (o, x))| {
            let (cos, sin) = (&self.cos[t * half..][..half], &self.sin[t * half..][..half]);
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    o1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                    o2[j] = x1[j] * sin[j] + x2[j] * cos[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn swiglu_matches_candle_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (7, 10), &dev).unwrap();
        let want = (candle_nn::ops::silu(&x.narrow(1, 0, 5).unwrap()).unwrap() * x.narrow(1, 5, 5).unwrap())
            .unwrap();
        let got = swiglu(&x, 5).unwrap();
        let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn geglu_bias_act_and_layer_norm_match_candle_ops() {
        use super::super::config::Activation;
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (7, 10), &dev).unwrap();
        let want = (x.narrow(1, 0, 5).unwrap().gelu_erf().unwrap() * x.narrow(1, 5, 5).unwrap()).unwrap();
        assert!(max_diff(&want, &geglu(&x, 5).unwrap()) < 1e-5);
        let b = Tensor::randn(0f32, 1.0, 10, &dev).unwrap();
        for act in [
            Activation::Identity,
            Activation::Tanh,
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Sigmoid,
        ] {
            let want = act.apply(&x.broadcast_add(&b).unwrap()).unwrap();
            let got = bias_act_in_place(x.copy().unwrap(), Some(&b), act).unwrap();
            assert!(max_diff(&want, &got) < 1e-5, "{act:?}");
        }
        let r = Tensor::randn(0f32, 1.0, (7, 10), &dev).unwrap();
        let (w, beta) =
            (Tensor::randn(1f32, 0.2, 10, &dev).unwrap(), Tensor::randn(0f32, 0.2, 10, &dev).unwrap());
        let sum = (x.broadcast_add(&b).unwrap() + &r).unwrap();
        let want = candle_nn::ops::layer_norm(&sum, &w, &beta, 1e-12).unwrap();
        let got = layer_norm_in_place(x.copy().unwrap(), Some(&b), Some(&r), &w, Some(&beta), 1e-12).unwrap();
        assert!(max_diff(&want, &got) < 1e-5);
        let zeros = beta.zeros_like().unwrap();
        let want = candle_nn::ops::layer_norm(&x, &w, &zeros, 1e-5).unwrap();
        assert!(
            max_diff(&want, &layer_norm_in_place(x.copy().unwrap(), None, None, &w, None, 1e-5).unwrap())
                < 1e-5
        );
        // The fused projection split into parts, with its bias.
        let qkv = Tensor::randn(0f32, 1.0, (7, 12), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 12, &dev).unwrap();
        let parts = split_parts(&qkv, Some(&bias), 3).unwrap();
        let with_bias = qkv.broadcast_add(&bias).unwrap();
        for p in 0..3 {
            assert!(max_diff(&parts.get(p).unwrap(), &with_bias.narrow(1, p * 4, 4).unwrap()) == 0.0);
        }
    }

    #[test]
    fn rope_packed_matches_candle_rope_thd() {
        let dev = Device::Cpu;
        let (t, h, d) = (6, 3, 8);
        let x = Tensor::randn(0f32, 1.0, (t, h, d), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (t, d / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (t, d / 2), &dev).unwrap();
        let want = candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0).unwrap(), &cos, &sin)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got = rope_packed(&x, &cos, &sin).unwrap();
        let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        assert!(rope_packed(&x.to_dtype(DType::F64).unwrap(), &cos, &sin).is_err());
    }
}
