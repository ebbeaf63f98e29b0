//! sentence-transformers' Dense modules: a linear layer and an activation over the pooled
//! vector (`linear.weight`, `linear.bias`; `residual.weight` when a residual changes width), with
//! weights from `model.safetensors` or, for folders saved without safetensors, `pytorch_model.bin`
//! read by candle's pickle loader. Run in f32 whatever the model's dtype, as the pooled vectors
//! are.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::Activation;
use super::encoder::Linear;
use super::sentence_transformers::DenseModule;

pub struct Dense {
    linear: Linear,
    activation: Activation,
    /// `Some(None)`: the input is added back as it is; `Some(Some(w))`: through `w`.
    residual: Option<Option<Tensor>>,
    pub out_features: usize,
}

impl Dense {
    /// Loads `module` from the model folder `dir` onto `device`.
    pub fn load(dir: &Path, module: &DenseModule, device: &Device) -> Result<Self> {
        let path = dir.join(&module.weights);
        let vb = if module.weights.ends_with(".safetensors") {
            // SAFETY: mapped read-only, as every weight file is.
            unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, device) }
        } else {
            VarBuilder::from_pth(&path, DType::F32, device)
        }
        .with_context(|| format!("cannot read the Dense weights {}", path.display()))?;
        let (i, o) = (module.in_features, module.out_features);
        let context = || format!("the Dense weights {} do not fit {i}->{o}", path.display());
        let linear = Linear::load(vb.pp("linear"), i, o, module.bias).with_context(context)?;
        let residual = match (module.use_residual, i == o) {
            (false, _) => None,
            (true, true) => Some(None),
            (true, false) => Some(Some(vb.pp("residual").get((o, i), "weight").with_context(context)?)),
        };
        Ok(Dense { linear, activation: module.activation, residual, out_features: o })
    }

    /// `[texts, in]` → `[texts, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.activation.apply(&self.linear.forward(x)?)?;
        match &self.residual {
            None => Ok(y),
            Some(None) => y + x,
            Some(Some(w)) => y + x.matmul(&w.t()?)?,
        }
    }
}

/// Loads the Dense modules of a pipeline, checking that each one's input is the width before it.
pub fn load_all(
    dir: &Path,
    modules: &[DenseModule],
    mut width: usize,
    device: &Device,
) -> Result<Vec<Dense>> {
    let mut out = Vec::with_capacity(modules.len());
    for m in modules {
        if m.in_features != width {
            bail!(
                "{}/config.json: in_features is {}, but the vector before it has {width} dimensions",
                dir.join(&m.path).display(),
                m.in_features
            );
        }
        out.push(Dense::load(dir, m, device)?);
        width = m.out_features;
    }
    Ok(out)
}
