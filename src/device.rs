//! Choosing the compute device and dtype.

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

/// Opens the device the user asked for.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        // NOTE: candle's cuda_is_available() only says whether the feature was compiled in, so
        // auto tries GPU 0 for real and falls back to the CPU when there is none.
        DeviceChoice::Auto if cfg!(feature = "cuda") => Ok(new_cuda(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device cuda:{n}: this binary was built without CUDA support; \
                     build it with `cargo build --release --features cuda` or use --device cpu"
                );
            }
            new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
        }
    }
}

/// `Device::new_cuda`, with a missing driver library turned into an error: cudarc panics when
/// it cannot load libcuda.
fn new_cuda(n: usize) -> Result<Device> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(n));
    std::panic::set_hook(hook);
    match opened {
        Ok(device) => Ok(device?),
        Err(_) => bail!("the CUDA driver library (libcuda.so) could not be loaded"),
    }
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
}
