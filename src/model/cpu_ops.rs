//! Fused element-wise steps for the CPU f32 path, run in parallel over tokens.
//!
//! NOTE: candle runs an element-wise op on a strided view (the gate half of the fused gate/up
//! projection, the q/k slices of the fused qkv projection) on one thread, and `rope_thd` splits
//! its work per batch entry, which is one for packed tokens. On two cores those serial passes
//! left one core idle for ~13% of a run. Each op here is one parallel pass with the same
//! arithmetic as the candle ops it replaces.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
    x.apply_op1_no_bwd(&SwiGlu { intermediate })
}

struct SwiGlu {
    intermediate: usize,
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (tokens, width) = layout.shape().dims2()?;
        let i = self.intermediate;
        if width != 2 * i {
            candle_core::bail!("swiglu-cpu: width {width} is not 2 x {i}");
        }
        let mut out = vec![0f32; tokens * i];
        out.par_chunks_mut(i).zip(src.par_chunks(width)).for_each(|(o, row)| {
            let (gate, up) = row.split_at(i);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, i))))
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
