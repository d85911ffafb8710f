#!/usr/bin/env bash
# A Triton release small enough to carry to the device machine (its carry limit is 64 MiB; a Triton wheel is ~200 MB),
# to run the GPU tests on a Triton the image does not have (the image: torch 2.11 with Triton 3.6).
#
#   bash scripts/pack_triton_for_device.sh [VERSION]        # default 3.7.1, torch 2.13's CUDA pin
#   KEEP_ALL_PTXAS=1 bash scripts/pack_triton_for_device.sh 3.9.0   # with 3.9's 12.9 ptxas as well (56 MiB)
#
# Writes .whl/triton-VERSION-cp312-min.tar.xz (the image's Python is 3.12): the wheel without libtriton.so's debug
# sections and static symbols, the AMD backend, the profiler (proton, CUPTI), the ptxas that sm_90 does not use,
# cuobjdump, nvdisasm and the test plugins: 49 MiB for 3.9.0 (92 MiB with the AMD backend, over the limit; 47 MiB
# for 3.7.1 with the AMD backend still in). On the device (carry [".whl"]):
#
#   python -c "import tarfile; tarfile.open('.whl/triton-3.7.1-cp312-min.tar.xz').extractall('/tmp/t37')"
#   export PYTHONPATH=/tmp/t37:$PWD        # before site-packages: this Triton wins; torch stays the image's
#   export TRITON_BACKENDS_IN_TREE=1       # find the backends in this tree, not by the image's entry points,
#                                          # which name the AMD backend (not packed; 3.7 and 3.9 read this)
#
# The launch memo runs only on the releases in ``launch.FAST_LAUNCH_TRITON``; to test it on another, add the release
# there in the device's copy first. docs/benchmarks.md (twenty-fifth and twenty-seventh sessions) has such runs.
set -euo pipefail
version=${1:-3.7.1}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --python-version 3.12 --only-binary :all: -d "$work" "triton==$version"
unzip -q "$work"/triton-*.whl -d "$work/tree"      # unzip keeps the file modes (ptxas must stay executable)
cd "$work/tree"
# Keep the one ptxas that compiles for sm_90 (3.7 takes ptxas below arch 100, 3.9 ptxas-blackwell from arch 90): ask
# the release's own get_ptxas, run on stand-ins for its knobs.
ptxas=$(python3 - <<'PY'
import ast
src = open("triton/backends/nvidia/compiler.py").read()
fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "get_ptxas")
class nvidia: ptxas, ptxas_blackwell = "ptxas", "ptxas-blackwell"
class knobs: NvidiaTool, nvidia = object, nvidia
ns = {"knobs": knobs}
exec(compile(ast.Module([fn], []), "get_ptxas", "exec"), ns)
try:
    print(ns["get_ptxas"](90))
except TypeError:  # a release whose get_ptxas takes no architecture: one ptxas
    print(ns["get_ptxas"]())
PY
)
rm -rf triton/_C/libproton.so triton/backends/nvidia/lib/cupti triton/backends/nvidia/lib/cupti-blackwell \
  triton/backends/nvidia/bin/cuobjdump triton/backends/nvidia/bin/nvdisasm \
  triton/instrumentation triton/FileCheck triton/plugins triton/backends/amd
# KEEP_ALL_PTXAS=1 keeps the others too (3.9's 12.9 ptxas: +8 MiB, for device_check.sh triton39-own-ptxas)
[ "${KEEP_ALL_PTXAS:-0}" = 1 ] || find triton/backends/nvidia/bin -name "ptxas*" ! -name "$ptxas" -delete
chmod +x triton/backends/nvidia/bin/ptxas*
strip --strip-unneeded triton/_C/libtriton.so      # keeps the dynamic symbols Python needs
echo "kept" triton/backends/nvidia/bin/ptxas*
mkdir -p "$root/.whl"
out="$root/.whl/triton-$version-cp312-min.tar.xz"
tar cf - triton | xz -9 -T0 > "$out"
ls -la "$out"
