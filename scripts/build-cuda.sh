#!/usr/bin/env bash
# Builds the CUDA-enabled release binary on a machine with no GPU and no CUDA toolkit:
#   scripts/build-cuda.sh            -> target/cuda/batch-embed
#
# What it does (all outside the repo's tracked files, under target/):
#   1. nvcc 13.0 and the CUDA headers/static runtime from pinned PyPI wheels (~105 MB) into
#      target/cuda-toolkit (skipped when present);
#   2. a copy of the registry's candle-core 0.11.1 whose cudarc dependency loads the CUDA
#      libraries at run time ("dynamic-loading") instead of linking them ("dynamic-linking"), so
#      the binary starts - and embeds on the CPU - on machines without CUDA;
#   3. a folder holding only libcudart.a, so the CUDA runtime links statically;
#   4. `cargo build --release --features cuda` with that patch, for compute capability
#      $CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/L40S), then strips the
#      binary into target/cuda/batch-embed.
#
# Users with a CUDA toolkit installed can instead run `cargo build --release --features cuda`
# (that binary links libcuda/cuBLAS directly and needs them present to start).
#
# Run time: the NVIDIA driver (libcuda.so.1) and cuBLAS, cuRAND and NVRTC of CUDA 13
# (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13). batch-embed finds them on
# the usual paths, LD_LIBRARY_PATH, a PyTorch venv's site-packages/nvidia/*/lib, or --cuda-lib-dir.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cap="${CUDA_COMPUTE_CAP:-90}"
toolkit="$root/target/cuda-toolkit"
patched="$root/target/cuda-patch"
out="$root/target/cuda/batch-embed"
python="${PYTHON:-python3}"

# 1. Toolkit from PyPI. NOTE: pin 13.0.x: a newer nvcc writes PTX a 580-series driver rejects.
if [ ! -x "$toolkit/nvidia/cu13/bin/nvcc" ]; then
    echo "build-cuda: installing nvcc 13.0 wheels into $toolkit" >&2
    "$python" -m pip install --quiet --no-deps --target "$toolkit" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
cuda_home="$toolkit/nvidia/cu13"
# The wheels put nvvm beside bin/; nvcc looks for it there.
[ -x "$cuda_home/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cuda_home/bin" >&2; exit 1; }

# 2. candle-core with cudarc loaded at run time.
candle_version="$(awk '/^name = "candle-core"/{getline; gsub(/[^0-9.]/, "", $0); print; exit}' Cargo.lock)"
registry_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$candle_version" 2>/dev/null | head -1 || true)"
if [ -z "$registry_src" ]; then
    cargo fetch --locked >/dev/null
    registry_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$candle_version" | head -1)"
fi
rm -rf "$patched/candle-core"
mkdir -p "$patched"
cp -r "$registry_src" "$patched/candle-core"
manifest="$patched/candle-core/Cargo.toml"
grep -q '"dynamic-linking"' "$manifest" || { echo "build-cuda: $manifest has no dynamic-linking feature to switch" >&2; exit 1; }
sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$manifest"

# 3. Static CUDA runtime: candle-kernels asks for -lcudart; offer only the static archive.
static_dir="$patched/cudart-static"
mkdir -p "$static_dir"
ln -sf "$cuda_home/lib/libcudart_static.a" "$static_dir/libcudart.a"

# 4. Build from a snapshot of the sources: the patch rewrites Cargo.lock's record of
#    candle-core, and the repo's own Cargo.lock and tree stay as they are (edits made while this
#    runs do not leak into the build).
snapshot="$patched/src-snapshot"
rm -rf "$snapshot"
mkdir -p "$snapshot"
cp -r Cargo.toml Cargo.lock src "$snapshot/"
export CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home" CUDA_COMPUTE_CAP="$cap"
export PATH="$cuda_home/bin:$PATH"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$static_dir -L native=$cuda_home/lib"
export CARGO_TARGET_DIR="$root/target/cuda-build"
echo "build-cuda: cargo build --release --features cuda (sm_$cap); a cold build takes ~15 min on 2 cores" >&2
(cd "$snapshot" && cargo build --release --features cuda \
    --config "patch.crates-io.candle-core.path=\"$patched/candle-core\"")
mkdir -p "$(dirname "$out")"
cp "$CARGO_TARGET_DIR/release/batch-embed" "$out"
strip "$out"
size=$(stat -c %s "$out")
echo "build-cuda: $out ($((size / 1024 / 1024)) MB, sm_$cap)" >&2
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
    echo "build-cuda: the binary is over 60 MB" >&2
    exit 1
fi
# It must start without any CUDA library (and then embed on the CPU).
"$out" --version >/dev/null
