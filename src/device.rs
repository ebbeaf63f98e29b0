//! Choosing the compute device and dtype: finding and loading the CUDA libraries, proving a GPU
//! works before anything is written, and recognising its out-of-memory errors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `--device`: auto, cpu, cuda or cuda:N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("expected auto, cpu, cuda or cuda:N, got \"{s}\"")),
            },
        }
    }
}

/// `--dtype`: auto (f32 on CPU, bf16 on CUDA), f32, bf16 or f16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeChoice {
    Auto,
    F32,
    Bf16,
    F16,
}

/// Opens the device the user asked for. `cuda_lib_dir` is searched first for the CUDA
/// libraries; `note` hears why `auto` fell back to the CPU.
pub fn open(choice: DeviceChoice, cuda_lib_dir: Option<&Path>, note: &mut dyn FnMut(&str)) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        // NOTE: candle's cuda_is_available() only says whether the feature was compiled in, so
        // auto tries GPU 0 for real (opening it and running a probe) and falls back to the CPU
        // when there is none or it does not work.
        DeviceChoice::Auto if cfg!(feature = "cuda") => match new_cuda(0, cuda_lib_dir) {
            Ok(device) => Ok(device),
            Err(e) => {
                note(&format!("no usable GPU ({e:#}); running on the CPU"));
                Ok(Device::Cpu)
            }
        },
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device cuda:{n}: this binary was built without CUDA support; \
                     build it with scripts/build-cuda.sh or `cargo build --release --features cuda`, or use --device cpu"
                );
            }
            new_cuda(n, cuda_lib_dir).with_context(|| format!("cannot open CUDA device {n}"))
        }
    }
}

/// `Device::new_cuda` after loading the CUDA libraries from where they are found, with
/// cudarc's panics (it panics when a library cannot be loaded) turned into errors; then the
/// memory pool is told to keep freed memory, and a probe runs a few kernels.
fn new_cuda(n: usize, cuda_lib_dir: Option<&Path>) -> Result<Device> {
    let device = open_cuda(n, cuda_lib_dir)?;
    keep_freed_memory(&device);
    probe(&device).context(
        "the GPU opened but failed a first computation (a bf16 matmul, softmax and copy back); a driver older than CUDA 13 (driver 580), or a GPU in a bad state?",
    )?;
    Ok(device)
}

/// A few kernels of the kinds the model runs, and their result copied back and checked: a
/// driver that cannot load our kernels, or a broken GPU, fails here rather than at the first
/// batch after the worker folder was written.
pub fn probe(device: &Device) -> Result<()> {
    let a = candle_core::Tensor::ones((64, 64), DType::F32, device)?.to_dtype(DType::BF16)?;
    let product = a.matmul(&a.t()?)?; // every element 64
    let probs = candle_nn::ops::softmax_last_dim(&product)?.to_dtype(DType::F32)?;
    let sums: Vec<f32> = probs.sum(1)?.to_vec1()?;
    if sums.iter().any(|s| (s - 1.0).abs() > 1e-2) {
        bail!("the probe computed wrong values (row sums {:?}…)", &sums[..sums.len().min(3)]);
    }
    Ok(())
}

/// Raises the CUDA memory pool's release threshold: by default the stream-ordered allocator
/// hands freed memory back to the driver at every synchronisation, and each batch pays to get
/// it again.
fn keep_freed_memory(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        use cudarc::driver::sys;
        let stream = d.cuda_stream();
        let ctx = stream.context();
        let _ = ctx.bind_to_thread();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut threshold: u64 = u64::MAX;
        // SAFETY: plain driver calls on a context that is current; the pool handle comes from
        // the driver and the attribute value points at a live u64.
        unsafe {
            if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
                let _ = sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                );
            }
        }
    }
    let _ = device;
}

/// Whether a CUDA error (as candle boxes it) is an allocation failure: the driver's
/// `CUDA_ERROR_OUT_OF_MEMORY` or cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`.
pub fn is_cuda_out_of_memory(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::CudaError;
        let driver_oom =
            |d: &cudarc::driver::DriverError| d.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
        if let Some(d) = e.downcast_ref::<cudarc::driver::DriverError>() {
            return driver_oom(d);
        }
        return match e.downcast_ref::<CudaError>() {
            Some(CudaError::Cuda(d)) => driver_oom(d),
            Some(CudaError::Cublas(c)) => {
                c.0 == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
            }
            _ => false,
        };
    }
    #[allow(unreachable_code)]
    {
        let _ = e;
        false
    }
}

fn open_cuda(n: usize, cuda_lib_dir: Option<&Path>) -> Result<Device> {
    let dirs = cuda_search_dirs(cuda_lib_dir, &|k| std::env::var(k).ok());
    let problems = preload_cuda_libraries(&dirs);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(n));
    std::panic::set_hook(hook);
    let looked = || {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "{}; looked in {} and the system library path; pass --cuda-lib-dir DIR, set LD_LIBRARY_PATH, or install the NVIDIA driver and CUDA 13 cuBLAS/cuRAND/NVRTC (e.g. pip install nvidia-cublas nvidia-curand nvidia-cuda-nvrtc)",
            problems.join("; "),
            if shown.is_empty() { "no extra folder".to_string() } else { shown.join(", ") }
        )
    };
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) if problems.is_empty() => Err(e.into()),
        Ok(Err(e)) => Err(anyhow::Error::from(e).context(looked())),
        Err(_) if problems.is_empty() => bail!("the CUDA libraries could not be loaded"),
        Err(_) => bail!("{}", looked()),
    }
}

/// The CUDA libraries cudarc opens by name (CUDA 13 names), and what they are.
const CUDA_LIBRARIES: &[(&str, &str)] = &[
    ("libcuda.so.1", "the NVIDIA driver"),
    ("libcublasLt.so.13", "cuBLASLt"),
    ("libcublas.so.13", "cuBLAS"),
    ("libcurand.so.10", "cuRAND"),
    ("libnvrtc.so.13", "NVRTC"),
];

/// Folders searched for the CUDA libraries, in order: `--cuda-lib-dir`, `LD_LIBRARY_PATH`,
/// `CUDA_HOME`/`CUDA_PATH`, the usual install paths, and the `site-packages/nvidia/*/lib`
/// folders of Python environments (PyTorch's pip wheels bring cuBLAS and friends there).
/// `env` reads environment variables (tests pass their own).
pub fn cuda_search_dirs(cuda_lib_dir: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(cuda_lib_dir.map(Path::to_path_buf));
    if let Some(paths) = env("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(home) = env(var) {
            dirs.push(Path::new(&home).join("lib64"));
            dirs.push(Path::new(&home).join("lib"));
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = env(var) {
            prefixes.push(PathBuf::from(p));
        }
    }
    if let Some(home) = env("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
        prefixes.push(Path::new(&home).join(".venv"));
    }
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    prefixes.extend(children("/opt").into_iter().map(|d| d.join(".venv")));
    for prefix in prefixes {
        for py in children(prefix.join("lib")) {
            if !py.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")) {
                continue;
            }
            for packages in ["site-packages", "dist-packages"] {
                let nvidia = py.join(packages).join("nvidia");
                for pkg in children(&nvidia) {
                    dirs.push(pkg.join("lib"));
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| d.is_dir() && seen.insert(d.clone()));
    dirs
}

fn children(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect()).unwrap_or_default();
    out.sort();
    out
}

/// Where each CUDA library is in `dirs` (first match), or `None` when it is in none of them.
pub fn find_cuda_libraries(dirs: &[PathBuf]) -> Vec<(&'static str, &'static str, Option<PathBuf>)> {
    CUDA_LIBRARIES
        .iter()
        .map(|&(name, what)| (name, what, dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())))
        .collect()
}

/// Opens each CUDA library by absolute path where found (so cudarc's later lookup by name finds
/// the loaded copy), else by name through the system's search path. Returns what failed.
fn preload_cuda_libraries(dirs: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, what, found) in find_cuda_libraries(dirs) {
        // NVRTC loads its builtins library by name from its own folder's neighbours.
        if let Some(dir) = found.as_ref().and_then(|p| p.parent()) {
            if name.starts_with("libnvrtc") {
                for builtins in children(dir) {
                    if builtins
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc-builtins.so"))
                    {
                        let _ = dlopen(&builtins.to_string_lossy());
                    }
                }
            }
        }
        let target =
            found.as_ref().map(|p| p.to_string_lossy().to_string()).unwrap_or_else(|| name.to_string());
        if let Err(e) = dlopen(&target) {
            problems.push(match found {
                Some(_) => format!("{target} ({what}) did not load: {e}"),
                None => format!("{name} ({what}) not found"),
            });
        }
    }
    problems
}

/// Loads a shared library for the life of the process (`RTLD_NOW | RTLD_GLOBAL`, so that
/// cudarc's later lookup by name finds it).
fn dlopen(path: &str) -> std::result::Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a CUDA library runs its initialisers, which is what cudarc would do.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(library); // kept loaded: cudarc uses it from here on
    Ok(())
}

/// Free and total memory of a CUDA device, in bytes (`None` on the CPU).
pub fn memory_info(device: &Device) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok();
    }
    let _ = device;
    None
}

/// The dtype the model runs in on `device`.
pub fn dtype(choice: DtypeChoice, device: &Device) -> DType {
    match choice {
        DtypeChoice::Auto if device.is_cuda() => DType::BF16,
        DtypeChoice::Auto | DtypeChoice::F32 => DType::F32,
        DtypeChoice::Bf16 => DType::BF16,
        DtypeChoice::F16 => DType::F16,
    }
}

/// A short name for logs and metadata: "cpu" or "cuda:N".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn finds_cuda_libraries_in_a_python_environment_and_the_given_folder() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        let lib = venv.join("lib/python3.12/site-packages/nvidia/cu13/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libcublas.so.13"), b"").unwrap();
        let given = root.path().join("given");
        std::fs::create_dir_all(&given).unwrap();
        std::fs::write(given.join("libnvrtc.so.13"), b"").unwrap();

        let venv_str = venv.display().to_string();
        let env = |k: &str| (k == "VIRTUAL_ENV").then(|| venv_str.clone());
        let dirs = cuda_search_dirs(Some(&given), &env);
        assert_eq!(dirs[0], given, "--cuda-lib-dir comes first");
        assert!(dirs.contains(&lib), "{dirs:?}");
        let found = find_cuda_libraries(&dirs);
        let at = |name: &str| found.iter().find(|f| f.0 == name).unwrap().2.clone();
        assert_eq!(at("libcublas.so.13"), Some(lib.join("libcublas.so.13")));
        assert_eq!(at("libnvrtc.so.13"), Some(given.join("libnvrtc.so.13")));
        assert!(!dirs.contains(&root.path().join("missing")));
    }

    #[test]
    fn the_probe_passes_on_a_working_device() {
        probe(&Device::Cpu).unwrap();
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn asking_for_cuda_without_it_is_one_clear_error() {
        let err = open(DeviceChoice::Cuda(0), None, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("built without CUDA support"), "{err}");
        assert!(open(DeviceChoice::Auto, None, &mut |_| {}).unwrap().is_cpu());
    }
}
