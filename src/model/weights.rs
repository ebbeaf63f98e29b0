//! Finding the weight files of a model directory (safetensors, single or sharded with an index;
//! else PyTorch's `pytorch_model.bin`, single or sharded, as older checkpoints have only those)
//! and opening them as one `VarBuilder`, with or without the task model's name prefix.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::ModelFiles;

/// The weight files of `dir`, and the index that lists them when sharded. Safetensors first;
/// PyTorch's pickled `pytorch_model.bin` only where a folder has no safetensors, as transformers
/// chooses.
pub fn locate(dir: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    for (single, index) in [
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ] {
        let index = dir.join(index);
        if index.is_file() {
            let files: Vec<PathBuf> = shards(&index)?.into_iter().map(|s| dir.join(s)).collect();
            for f in &files {
                if !f.is_file() {
                    bail!("{} names {}, which is missing", index.display(), f.display());
                }
            }
            return Ok((files, Some(index)));
        }
        if dir.join(single).is_file() {
            return Ok((vec![dir.join(single)], None));
        }
    }
    bail!(
        "no weights in {}: expected model.safetensors or model.safetensors.index.json (or PyTorch's pytorch_model.bin)",
        dir.display()
    )
}

/// The shard file names a sharded checkpoint's index (`*.index.json`) lists in its `weight_map`.
pub fn shards(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no \"weight_map\" object", index.display()))?;
    let shards: BTreeSet<String> = map.values().filter_map(|v| v.as_str()).map(str::to_string).collect();
    if shards.is_empty() {
        bail!("{} lists no weight files", index.display());
    }
    Ok(shards)
}

/// Whether `path` is a PyTorch pickle (`*.bin`, `*.pt`, `*.pth`) rather than safetensors.
fn is_pickle(path: &Path) -> bool {
    path.extension().is_none_or(|e| e != "safetensors")
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
    if !files.weights.iter().any(|f| is_pickle(f)) {
        // Open each file alone first, so a truncated or foreign file is reported by name.
        for f in &files.weights {
            // SAFETY: the file is mapped read-only; we do not guard against it being changed on
            // disk while we run, as every memory-mapped model loader does.
            unsafe { MmapedSafetensors::new(f) }
                .with_context(|| format!("{} is not a readable safetensors file", f.display()))?;
        }
    }
    let vb = open(files, dtype, device)?;
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
/// The names and shapes of the tensors in `files`, read from their headers (safetensors) or
/// tensor lists (PyTorch pickles), without reading the tensors.
pub fn shapes(files: &[PathBuf]) -> Result<HashMap<String, Vec<usize>>> {
    let mut out = HashMap::new();
    for path in files {
        if is_pickle(path) {
            for (name, info) in open_pickle(path)?.tensor_infos() {
                out.insert(name.clone(), info.layout.dims().to_vec());
            }
        } else {
            // SAFETY: mapped read-only, as every weight file is.
            let st = unsafe { MmapedSafetensors::new(path) }
                .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
            for (name, view) in st.tensors() {
                out.insert(name, view.shape().to_vec());
            }
        }
    }
    Ok(out)
}

/// Opens the weights of `files` as they are (no name prefix), whatever their format.
pub fn open(files: &ModelFiles, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if files.weights.iter().any(|f| is_pickle(f)) {
        return Ok(VarBuilder::from_backend(Box::new(Pickles::open(&files.weights)?), dtype, device.clone()));
    }
    // SAFETY: the files are mapped read-only; we do not guard against them being changed on
    // disk while we run, as every memory-mapped model loader does.
    unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
        .with_context(|| format!("cannot open the weights in {}", files.dir.display()))
}

/// What identifies a weight file without reading its tensors: a safetensors file's header
/// (tensor names, dtypes, shapes, offsets) and size; a PyTorch pickle's tensor list (names,
/// dtypes, shapes, strides, offsets, storages) and size.
pub fn identity(path: &Path) -> Result<Vec<u8>> {
    if !is_pickle(path) {
        return safetensors_header(path)
            .with_context(|| format!("{} is not a readable safetensors file", path.display()));
    }
    let pickle = open_pickle(path)?;
    let mut infos: Vec<_> = pickle.tensor_infos().values().collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for t in infos {
        let line = format!(
            "{} {:?} {:?} {:?} {} {} {}\n",
            t.name,
            t.dtype,
            t.layout.dims(),
            t.layout.stride(),
            t.layout.start_offset(),
            t.path,
            t.storage_size
        );
        out.extend_from_slice(line.as_bytes());
    }
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    out.extend_from_slice(&size.to_le_bytes());
    Ok(out)
}

/// A safetensors file's header (tensor names, dtypes, shapes, offsets) and its size: what
/// identifies the weights without reading them.
fn safetensors_header(path: &Path) -> std::io::Result<Vec<u8>> {
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

/// Reads a PyTorch pickle's tensor list (its `data.pkl`; the tensors are read when asked for).
fn open_pickle(path: &Path) -> Result<PthTensors> {
    // NOTE: candle's reader understands only the pickle opcodes a state dict is made of and
    // never runs code from the file, unlike Python's `torch.load` without `weights_only`.
    let pickle = PthTensors::new(path, None).with_context(|| {
        format!(
            "{} is not a PyTorch checkpoint batch-embed can read (a zip of a pickled state dict)",
            path.display()
        )
    })?;
    if pickle.tensor_infos().is_empty() {
        bail!("{} holds no tensors batch-embed can read", path.display());
    }
    Ok(pickle)
}

/// The tensors of one or more PyTorch pickles (a sharded `pytorch_model-*.bin`), each read from
/// its file when the model asks for it.
struct Pickles {
    files: Vec<PthTensors>,
    /// Tensor name → the file that holds it.
    at: HashMap<String, usize>,
}

impl Pickles {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut at = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let pickle = open_pickle(path)?;
            for name in pickle.tensor_infos().keys() {
                at.insert(name.clone(), i);
            }
            files.push(pickle);
        }
        Ok(Pickles { files, at })
    }

    fn tensor(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let missing = || candle_core::Error::CannotFindTensor { path: name.to_string() }.bt();
        let file = self.at.get(name).ok_or_else(missing)?;
        let tensor = self.files[*file].get(name)?.ok_or_else(missing)?;
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

impl SimpleBackend for Pickles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.tensor(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.at.contains_key(name)
    }
}
