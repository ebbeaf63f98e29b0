//! Finding the safetensors files of a model directory (single file or sharded with an index) and
//! opening them as one memory-mapped `VarBuilder`, with or without the `model.` name prefix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::ModelFiles;

/// The weight files of `dir`, and the index that lists them when sharded.
pub fn locate(dir: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text =
            std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no \"weight_map\" object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.is_empty() {
            bail!("{} lists no weight files", index.display());
        }
        let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
        for f in &files {
            if !f.is_file() {
                bail!("{} names {}, which is missing", index.display(), f.display());
            }
        }
        return Ok((files, Some(index)));
    }
    if single.is_file() {
        return Ok((vec![single], None));
    }
    bail!("no weights in {}: expected model.safetensors or model.safetensors.index.json", dir.display())
}

/// Opens the weights as a `VarBuilder` rooted where the model's tensors live: at the first of
/// `prefixes` (e.g. `"model."`, or `""` for none) under which `anchor` (a tensor every
/// checkpoint of the architecture has, e.g. `embed_tokens.weight`) exists.
pub fn var_builder(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
    anchor: &str,
    prefixes: &[&str],
) -> Result<VarBuilder<'static>> {
    // Open each file alone first, so a truncated or foreign file is reported by name.
    for f in &files.weights {
        // SAFETY: the file is mapped read-only; we do not guard against it being changed on disk
        // while we run, as every memory-mapped model loader does.
        unsafe { MmapedSafetensors::new(f) }
            .with_context(|| format!("{} is not a readable safetensors file", f.display()))?;
    }
    // SAFETY: as above.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
        .with_context(|| format!("cannot open the weights in {}", files.dir.display()))?;
    for prefix in prefixes {
        if vb.contains_tensor(&format!("{prefix}{anchor}")) {
            return Ok(match prefix.strip_suffix('.') {
                Some(p) => vb.pp(p),
                None => vb,
            });
        }
    }
    let tried: Vec<String> = prefixes.iter().map(|p| format!("\"{p}{anchor}\"")).collect();
    bail!("the weights in {} have no {} tensor", files.dir.display(), tried.join(" or "))
}
/// A safetensors file's header (tensor names, dtypes, shapes, offsets) and its size: what
/// identifies the weights without reading them.
pub fn safetensors_header(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len).min(100 << 20);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let size = f.metadata()?.len();
    header.extend_from_slice(&size.to_le_bytes());
    Ok(header)
}
