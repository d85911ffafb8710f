#!/usr/bin/env bash
# One call on the GPU machine, in the order a kernel change needs: correctness first, then timing.
#   bash scripts/device_check.sh [tests|fwd|bwd ...]     (default: all three)
# tests: every `gpu`-marked test (kernels against the PyTorch reference at real sizes, patched models);
# fwd:   the operator at N=4096, d=64/128, causal and not (bench_attention.py --quick; each variant settled 200 ms
#        at its own clocks before its timing, 3 rotated passes);
# bwd:   forward+backward at the same shapes (bench_attention.py --backward --quick).
# sweep: issue 3's table settled: N=1024/4096/16384, d=64/128, causal and not, its variants only (G=1, G=2/4 both
#        fusions, rank1 W128 c.5 at block_m 128/32, mean W128, the SDPA engine's), flash, cuDNN, and SageAttention 1
#        where importable or its wheel is in .whl/ (`pip download --no-deps -d .whl sageattention==1.0.6`).
# overlap: the SDPA engine with the batch in chunks, each chunk's Q_eff formed on a side stream while cuDNN runs on
#          the chunk before (scripts/probe_overlap.py), d=64 causal both fusions, d=64 non-causal and d=128 causal.
# bwd16k: forward+backward at N=16384 for G=1, G=2 mean/rank1 (fused kernels and backend="sdpa") and rank1 W128 c0.5
#         (issue 7's other length).
# tiles: the expanded path's default tiles against alternatives (compare_fwd_configs.py --alternatives).
#        (compare_fwd_configs.py and bench_attention.py run each config 200 ms before timing it: --settle-ms)
# options: Q_eff in the kernel's prologue, TMA K/V tiles and kernel-stored positions against the defaults
#          (--kernel-options).
# caps: register caps that fit one more program per SM (--register-caps; scripts/kernel_resources.py's table).
# regroup: the regroup launch (backward: Q_eff and dQ) under other tiles (scripts/bench_regroup.py).
# grouping: the grouping's launches alone, from Python and from a CUDA graph (scripts/bench_grouping.py).
# qeff: backend="sdpa"'s Q_eff by the fused grouping + Q_eff launch against the two launches, per tile, way and
#       fusion source (bench_regroup.py --qeff), then the SDPA-engine variants at N=4096 with each
#       (bench_attention.py --quick).
# kernel-tests: the forward kernel's GPU tests alone; bwd-tests: the backward's; lora-tests: LoRA's (PEFT from .whl).
# graphs: whole-model prefill (SmolLM2 4x4096 with the calibrated config, Llama-3.2-1B 1x4096, random weights), eager
#         and as CUDA-graph replays (bench model --cuda-graph), after the graph test (captured calls causal, no mask).
# models: the same prefill benches, eager only.
# settle: bench model's settle (RunConfig.settle_ms, 200 ms by default on a GPU) against --settle-ms 0: SmolLM2 4x4096
#         with the calibrated config and Llama-3.2-1B 1x4096 (random weights), eager, alternated twice.
# window: the exact window on backend="sdpa" taken apart (scripts/bench_window_sdpa.py: pieces, band kernel tiles),
#         then the window variants on both engines at N=4096 and 16384 (bench_attention.py).
# triton39: the operator on Triton 3.9.0 (carried, packed by scripts/pack_triton_for_device.sh 3.9.0) and on the image's
#           3.6, N=4096 and 16384, d=64/128; on 3.9 also with the Q_eff prologue at d=64 (DISTR_QEFF_PROLOGUE=1; the
#           forty-third session ran it with =0, Q_eff by its launch, which is now 3.9's default there).
# triton39-tests: every `gpu`-marked test on Triton 3.9.0 (carried as for triton39).
# triton39-ptxas: the operator on Triton 3.9.0 with its own ptxas for sm_90 (13.4) and with the image's Triton 3.6
#           ptxas (12.8, through TRITON_PTXAS_BLACKWELL_PATH; the d=64 table then picks the prologue by itself), and
#           on 3.6, N=4096 and 16384, d=64/128: whether 3.9's gap to 3.6 is its ptxas.
# triton39-own-ptxas: at d=64, N=4096 and 16384, Triton 3.9.0 with the 12.9 ptxas it ships for sm_90
#           (TRITON_PTXAS_BLACKWELL_PATH=.../triton/backends/nvidia/bin/ptxas: README's advice for Hopper), then 3.6;
#           packed by `KEEP_ALL_PTXAS=1 bash scripts/pack_triton_for_device.sh 3.9.0`.
# grouping-fp32: the fp32-Q G=4 / G=8 rank1 grouping launch at d=256, 128, 64, its Grams by rows (fp32's default at
#           d <= 64) and by dot (the default above since the forty-sixth session's run: dot 6x faster at d=256 G=4,
#           4x at d=128, 1.3-1.4x slower at d=64) (bench_grouping.py; `--warps 16` also times 16 warps, which spill
#           about as much per thread at d=256 in CPU compiles).
# triton39-scratch: on Triton 3.9.0 at d=64, N=4096 and 16384, the default (Q_eff by its launch) against the Q_eff
#           prologue with and without its tile through a global scratch (compare_fwd_configs.py --qeff-scratch,
#           3 rounds): whether the scratch, which compiles without 3.9's C7513, beats the launch there.
# host: host time per call at SmolLM2's layer shape, launches through ops/launch.py's memo and Triton's path
#       (scripts/host_overhead.py).
# launch: eager prefill (SmolLM2 4x4096 with the calibrated config twice, Llama-3.2-1B 1x4096 once) with
#         DISTR_FAST_LAUNCH=1 and 0 in turn.
# fused-model: eager prefill with the grouping inside the attention kernel (DISTR_FWD_FUSED_GROUPING) against the
#              grouping launch and exact, alternated in one process (scripts/probe_model_switches.py), at host-bound
#              and GPU-bound shapes; then host time per call with each (host_overhead.py --fused-grouping both).
# compile: torch.compile(mode="reduce-overhead") over a patched model (the custom op, ops/compile_op.py): its GPU tests
#          (operator, models, training, capture), then eager and compiled prefill side by side, exact and patched
#          (SmolLM2 shape, calibrated config; 1x1024 and 4x4096), alternated in one process
#          (scripts/probe_model_switches.py), then `bench model --compile reduce-overhead` at 1x1024.
# exp-fma: a share of the score tiles' exp2 by a polynomial on the FMA pipe (FwdConfig.exp_fma 2 / 4): its GPU tests,
#          then against the default at N=4096 and 16384, d=64/128, causal and not, 3 rotated rounds
#          (compare_fwd_configs.py --exp-fma).
# qeff-scratch: the Q_eff prologue's tile through a global scratch (FwdConfig.qt_scratch on the expanded path): its
#               GPU tests, then against the defaults at N=4096 and 16384 (compare_fwd_configs.py --qeff-scratch).
# rescale-slack: FlashAttention-4's conditional rescaling (FwdConfig.rescale_slack 8 / 4): its GPU tests, then against
#                the default at N=4096 and 16384, d=64/128, causal and not, 3 rotated rounds.
# window-parts: where the fused kernel's exact window spends its time at N=4096 (compare_fwd_configs.py
#               --window-parts): G2 rank1 on its own config and on the window's, W128 without and with the σ² pass
#               (c0 / c.5), 64-key band tiles, σ² by one dot; 3 rotated rounds.
# window-fwd: the window options' own GPU tests (FwdConfig.sigma2_deferred_sums, band_exact_tiles), the kernel's
#             reference tests at real sizes with sigma2_deferred_sums on (the table's default now), then W128 with no
#             correction (c0: no σ² pass) and with c.5 (rank1, mean; the σ² pass per tile and deferred) at N=4096 and
#             16384: the c.5 − c0 gap is the σ² pass's cost.
# band-first: the window without a σ² pass (FwdConfig.band_first: the band's tiles first, σ² from their own
#             products; also with sigma2_deferred_sums): its GPU tests and the deferred sums', the kernel's reference
#             tests at real sizes with band_first on, then W128 c.5 (rank1, mean) against the default and the σ² pass
#             with the other sums (per tile / deferred: the default's since the thirty-seventh session) at N=4096 and
#             16384, d=64/128, causal and not, 3 rotated rounds.
# band-deferred: the SDPA engine's band kernel with its σ² sums deferred to after the band loop
#                (BandConfig.deferred_sums): the engine's GPU tests, the band kernel per tile with and without
#                (bench_window_sdpa.py --deferred), then the engine's window calls at N=4096 with
#                DISTR_BAND_SIGMA2_DEFERRED=0 / 1 alternated, twice.
# band-exact: the window's band tiles that lie inside the band by the exact product alone
#             (FwdConfig.band_exact_tiles), with and without the σ² pass by one dot: its GPU tests, the kernel's
#             reference tests with both on (the table's config), then against the default at N=4096 and 16384,
#             d=64/128, causal and not, rank1 and mean W128 c.5, 3 rotated rounds.
# tile-orders: the forward's tile orders side by side, causal, N=4096 and 16384 (compare_fwd_configs.py --tile-orders,
#              5 rounds, rotated start: the twenty-first session's first run favoured the config timed second).
# dq-order: forward+backward, causal, N=4096, with the dQ kernel's programs in natural and reversed order
#           (DISTR_BWD_DQ_TILE_ORDER, alternated over two runs each; d=64 without a window takes atomic dQ, no dQ kernel).
# engines: eager prefill benches of paper / recommended (/ calibrated, SmolLM2) on the fused kernel and with
#          DistrConfig.engine="sdpa" (SDPA on Q_eff; the exact window as SDPA pieces and our band kernel).
# probe-sdpa: which SDPA backend runs (and how fast) at the Llama-3.2-1B and SmolLM2 layer shapes with a contiguous
#             Q_eff and transposed K/V views (scripts/probe_sdpa_layout.py): why backend="sdpa" lost in models.
# probe-dqk: the ceiling of a reduced grouped product (scripts/probe_reduced_dqk.py: scores at d_qk = d/2, d/4 with no
#            grouping, and K̃ formed per key tile by a dot), beside flash and cuDNN.
# ncu-grouping / ncu-attention: Nsight Compute on the grouping and Q_eff launches / the fused forward beside cuDNN
#           and flash (scripts/profile_launches.py); full reports in $out/ncu-*.txt, key lines printed.
# bwdpaths: forward+backward at N=4096 with each grouped variant also on the backward's earlier paths
#           (bench_attention.py --backward --backward-paths: regroup launches / the forward's Q_eff kept).
# Logs and JSON go to $OUT (the device tool's folder) or /tmp/device-check; each table prints last.
# The GPU tests took 470 s in one process (mostly kernel compilation). With pytest-xdist importable, or its
# wheels in .whl/ (carry ".whl"; `pip download --no-deps -d .whl pytest-xdist execnet`), they run in
# $GPU_TEST_WORKERS processes (default 8) that compile in parallel (14 ran out of memory on an 80 GB H100).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
out="${OUT:-/tmp/device-check}"
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests fwd bwd)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || exit 1
if ls .whl/pytest_xdist-*.whl >/dev/null 2>&1 && ! python -c "import xdist" 2>/dev/null; then
  python -m pip install -q --no-index --no-deps --target /tmp/xdist-site .whl/pytest_xdist-*.whl .whl/execnet-*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/xdist-site"
fi
if ls .whl/sageattention-*.whl >/dev/null 2>&1 && ! python -c "import sageattention" 2>/dev/null; then
  python -m pip install -q --no-index --no-deps --target /tmp/sage-site .whl/sageattention-*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/sage-site"
fi
# PEFT for the LoRA tests (tests/patching/test_peft.py has a GPU case): `pip download --no-deps -d .whl peft`
if ls .whl/peft-*.whl >/dev/null 2>&1 && ! python -c "import peft" 2>/dev/null; then
  python -m pip install -q --no-index --no-deps --target /tmp/peft-site .whl/peft-*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/peft-site"
fi
workers=()
python -c "import xdist" 2>/dev/null && workers=(-n "${GPU_TEST_WORKERS:-8}")
# Triton 3.9.0 from .whl/triton-3.9.0-cp312-min.tar.xz (`bash scripts/pack_triton_for_device.sh 3.9.0`, carry ".whl"),
# unpacked to /tmp/t39 and checked to import as 3.9; prints the environment that puts it first, or fails
triton39_env() {
  [ -d /tmp/t39/triton ] || python -c \
    "import tarfile; tarfile.open('.whl/triton-3.9.0-cp312-min.tar.xz').extractall('/tmp/t39')" || return 1
  PYTHONPATH="/tmp/t39:$PYTHONPATH" TRITON_BACKENDS_IN_TREE=1 python -c \
    "import triton; assert triton.__version__.startswith('3.9'), triton.__version__" || return 1
  echo "PYTHONPATH=/tmp/t39:$PYTHONPATH TRITON_BACKENDS_IN_TREE=1"
}
# ptxas_runs NAME "DIMS" RUN...: each RUN is "TRITON|VAR=VALUE" (3.9 with $t39env, or the image's 3.6; VAR=VALUE
# optional, e.g. another ptxas): what configs reads of the sm_90 ptxas, then the operator at N=4096 and 16384 at
# those head dims (G1, G2 mean/rank1, the window), into $out/NAME.log and one JSON per run
ptxas_runs() {
  local name=$1 dims=$2 run tr px r=0
  shift 2
  for run in "$@"; do
    IFS="|" read -r tr px <<< "$run"
    echo "== Triton $tr${px:+, $px}" | tee -a "$out/$name.log"
    # shellcheck disable=SC2046,SC2086
    env $px $([ "$tr" = 3.9 ] && echo "$t39env") python -c "from distr_patch.ops import configs; \
print('sm_90 ptxas', configs.sm90_ptxas_release(), 'd=64 prologue', configs.qeff_prologue_at_d64())" \
      2>&1 | tee -a "$out/$name.log"
    # shellcheck disable=SC2046,SC2086
    env $px $([ "$tr" = 3.9 ] && echo "$t39env") python scripts/bench_attention.py --n 4096 16384 --d $dims \
      --rep-ms 10 --json "$out/$name-triton$tr${px:+-other-ptxas}.json" --variants "distr G=1" "distr G=2 mean" \
      "distr G=2 rank1" "distr G=2 rank1 W128 c.5 bm128" 2>&1 | tee -a "$out/$name.log" \
      | sed -n '/^| d |/,$p' | cut -d'|' -f2-11 || r=1
  done
  return $r
}
rc=0
for step in "${steps[@]}"; do
  case "$step" in
    tests) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests 2>&1 | tee "$out/gpu-tests.log" | tail -20 || rc=1 ;;
    fwd) python scripts/bench_attention.py --quick --rep-ms 10 --json "$out/fwd.json" 2>&1 | tee "$out/fwd.log" \
           | sed -n '/^| d |/,$p' || rc=1 ;;
    bwd) python scripts/bench_attention.py --backward --quick --rep-ms 10 --json "$out/bwd.json" 2>&1 \
           | tee "$out/bwd.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    sweep) python scripts/bench_attention.py --rep-ms 10 --json "$out/sweep.json" --variants "distr G=1" \
           "distr G=2 mean" "distr G=2 rank1" "distr G=4 mean" "distr G=4 rank1" "distr G=2 rank1 W128 c.5 bm128" \
           "distr G=2 rank1 W128 c.5 bm32" "distr G=2 mean W128 c.5 bm128" "distr G=2 mean sdpa" "distr G=2 rank1 sdpa" \
           "distr G=4 mean sdpa" "distr G=2 rank1 W128 c.5 bm128 sdpa" "distr G=2 mean W128 c.5 bm128 sdpa" sage1 2>&1 \
           | tee "$out/sweep.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    overlap) for a in "--d 64 --causal 1 --fusion mean" "--d 64 --causal 1 --fusion rank1" "--d 64 --causal 0 --fusion mean" \
               "--d 128 --causal 1 --fusion mean"; do
               # shellcheck disable=SC2086
               python scripts/probe_overlap.py $a 2>&1 | tee -a "$out/overlap.log" | sed -n '/^d=/,$p' || rc=1
             done ;;
    bwd16k) python scripts/bench_attention.py --backward --n 16384 --rep-ms 10 --json "$out/bwd16k.json" \
           --variants "distr G=1" "distr G=2 mean" "distr G=2 rank1" "distr G=2 rank1 W128 c.5" "distr G=2 mean sdpa" \
           "distr G=2 rank1 sdpa" 2>&1 \
           | tee "$out/bwd16k.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    tiles) python scripts/compare_fwd_configs.py --variants "G2 mean" "G2 rank1" "G2 r1 W128 c.5" --d 64 128 \
           --alternatives 2>&1 | tee "$out/tiles.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    options) python scripts/compare_fwd_configs.py --variants "G1" "G2 mean" "G2 rank1" "G2 r1 W128 c.5" --d 64 128 \
           --kernel-options --no-reduced 2>&1 | tee "$out/options.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    caps) python scripts/compare_fwd_configs.py --variants "G1" "G2 mean" "G2 r1 W128 c.5" --d 64 128 --register-caps \
           --no-reduced 2>&1 | tee "$out/caps.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    regroup) python scripts/bench_regroup.py 2>&1 | tee "$out/regroup.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    qeff) python scripts/bench_regroup.py --qeff --qeff-tiles 2,64,64 4,64,64 4,128,64 2>&1 | tee "$out/qeff.log" \
           | sed -n '/^fused default/,$p' || rc=1
           python scripts/bench_attention.py --quick --rep-ms 20 --json "$out/qeff-fwd.json" --variants \
             "distr G=2 mean sdpa" "distr G=2 mean sdpa 2launch" "distr G=2 mean sdpa dot memory" \
             "distr G=2 rank1 sdpa" "distr G=2 rank1 sdpa 2launch" "distr G=2 rank1 sdpa dot memory" \
             "distr G=2 rank1 W128 c.5 bm128 sdpa" 2>&1 | tee "$out/qeff-fwd.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    bwd-tests) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_bwd.py 2>&1 \
           | tee "$out/bwd-tests.log" | tail -20 || rc=1 ;;
    bwdpaths) python scripts/bench_attention.py --backward --backward-paths --quick --rep-ms 10 \
           --json "$out/bwdpaths.json" --variants "distr G=1" "distr G=2 mean" "distr G=2 rank1" \
           "distr G=2 rank1 W128 c.5" 2>&1 | tee "$out/bwdpaths.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    grouping) python scripts/bench_grouping.py 2>&1 | tee "$out/grouping.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    lora-tests) python -m pytest -q -p no:cacheprovider -m gpu tests/patching/test_peft.py \
           tests/finetune/test_finetune_lora.py 2>&1 | tee "$out/lora-tests.log" | tail -20 || rc=1 ;;
    kernel-tests) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py 2>&1 \
           | tee "$out/kernel-tests.log" | tail -20 || rc=1 ;;
    graphs|models)
           if [ "$step" = graphs ]; then
             python -m pytest -q -p no:cacheprovider -m gpu tests/patching/test_triton_models.py -k cuda_graph 2>&1 \
               | tee "$out/graph-tests.log" | tail -3 || rc=1
             modes=("" --cuda-graph)
           else
             modes=("")
           fi
           for g in "${modes[@]}"; do
             python -m distr_patch bench model --model preset:smollm2-135m --dtype bfloat16 --device cuda --group-sizes 2 \
               --settings paper,recommended --distr-configs configs/smollm2-135m-g2-calibrated-10pct.json --seq-lens 4096 \
               --batch-sizes 4 --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots --output-dir "$out" $g 2>&1 \
               | grep "| prefill |" || rc=1
             python -m distr_patch bench model --model preset:llama-3.2-1b --dtype bfloat16 --device cuda --group-sizes 2 \
               --settings paper,recommended --seq-lens 4096 --batch-sizes 1 --gen-tokens 1 --gen-prompt-len 16 \
               --repeats 10 --no-plots --output-dir "$out" $g 2>&1 | grep "| prefill |" || rc=1
           done ;;
    settle) for round in 1 2; do
             for ms in 200 0; do
               echo "== round $round, --settle-ms $ms" | tee -a "$out/settle.log"
               python -m distr_patch bench model --model preset:smollm2-135m --dtype bfloat16 --device cuda \
                 --group-sizes 2 --settings paper,recommended --distr-configs configs/smollm2-135m-g2-calibrated-10pct.json \
                 --seq-lens 4096 --batch-sizes 4 --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots \
                 --settle-ms $ms --output-dir "$out/settle-smollm2-$ms-r$round" 2>&1 | tee -a "$out/settle.log" \
                 | grep "| prefill |" || rc=1
               python -m distr_patch bench model --model preset:llama-3.2-1b --dtype bfloat16 --device cuda \
                 --group-sizes 2 --settings paper,recommended --seq-lens 4096 --batch-sizes 1 --gen-tokens 1 \
                 --gen-prompt-len 16 --repeats 10 --no-plots --settle-ms $ms --output-dir "$out/settle-llama-$ms-r$round" \
                 2>&1 | tee -a "$out/settle.log" | grep "| prefill |" || rc=1
             done
           done ;;
    fused-model) for shape in "1 1024" "1 4096" "4 4096"; do
             set -- $shape
             python scripts/probe_model_switches.py --modes exact fast fused --batch "$1" --seq-len "$2" \
               --config configs/smollm2-135m-g2-calibrated-10pct.json 2>&1 | tee -a "$out/fused-model.log" \
               | sed -n '/^preset/,$p' || rc=1
           done
           python scripts/probe_model_switches.py --model preset:llama-3.2-1b --modes exact fast fused --batch 1 \
             --seq-len 4096 --rounds 3 2>&1 | tee -a "$out/fused-model.log" | sed -n '/^preset/,$p' || rc=1
           python scripts/host_overhead.py --batch 1 --n 1024 --launch fast --fused-grouping both --rounds 5 2>&1 \
             | tee "$out/host-fused.log" | sed -n '/^| variant/,$p' || rc=1 ;;
    compile) python -m pytest -q -p no:cacheprovider -m gpu tests/patching/test_triton_models.py \
             tests/ops/test_compile_op.py -k "compiled or capture" 2>&1 | tee "$out/compile-tests.log" | tail -3 || rc=1
           for shape in "1 1024" "4 4096"; do
             set -- $shape
             python scripts/probe_model_switches.py --modes exact fast exact-compiled compiled --batch "$1" \
               --seq-len "$2" --rounds 3 --config configs/smollm2-135m-g2-calibrated-10pct.json 2>&1 \
               | tee -a "$out/compile-model.log" | sed -n '/^preset/,$p' || rc=1
           done
           python -m distr_patch bench model --model preset:smollm2-135m --dtype bfloat16 --device cuda --group-sizes 2 \
             --settings paper,recommended --seq-lens 1024 --batch-sizes 1 --gen-tokens 1 --gen-prompt-len 16 \
             --repeats 10 --no-plots --output-dir "$out" --compile reduce-overhead 2>&1 | tee "$out/compile-bench.log" \
             | grep "| prefill |" || rc=1 ;;
    exp-fma) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py -k exp_fma 2>&1 \
           | tee "$out/exp-fma-tests.log" | tail -5 || rc=1
           python scripts/compare_fwd_configs.py --variants G1 "G2 mean" "G2 rank1" --d 64 128 --n 4096 16384 \
             --exp-fma --no-reduced --rounds 3 2>&1 | tee "$out/exp-fma.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    qeff-scratch) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py \
             -k qeff_scratch 2>&1 | tee "$out/qeff-scratch-tests.log" | tail -5 || rc=1
           python scripts/compare_fwd_configs.py --variants "G2 mean" "G2 rank1" "G4 mean" "G2 r1 W128 c.5" --d 64 128 \
             --n 4096 16384 --qeff-scratch --no-reduced --rounds 3 2>&1 | tee "$out/qeff-scratch.log" \
             | sed -n '/^| d |/,$p' || rc=1 ;;
    rescale-slack) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py \
             -k rescale_slack 2>&1 | tee "$out/rescale-slack-tests.log" | tail -5 || rc=1
           python scripts/compare_fwd_configs.py --variants G1 "G2 mean" "G2 rank1" --d 64 128 --n 4096 16384 \
             --rescale-slack 8 4 --no-reduced --rounds 3 2>&1 | tee "$out/rescale-slack.log" \
             | sed -n '/^| d |/,$p' || rc=1 ;;
    window-parts) python scripts/compare_fwd_configs.py --variants "G2 rank1" "G2 r1 W128 c0" "G2 r1 W128 c.5" \
             --d 64 128 --n 4096 --no-reduced --window-parts --sigma2-diff --rounds 3 2>&1 \
             | tee "$out/window-parts.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    window-fwd) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py \
             -k "sigma2_deferred or band_exact" 2>&1 | tee "$out/window-fwd-tests.log" | tail -3 || rc=1
           DISTR_FWD_SIGMA2_DEFERRED=1 python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu \
             tests/ops/test_distr_attn.py -k "matches_reference and table" 2>&1 \
             | tee -a "$out/window-fwd-tests.log" | tail -3 || rc=1
           python scripts/compare_fwd_configs.py --variants "G2 r1 W128 c0" "G2 r1 W128 c.5" "G2 mean W128 c.5" \
             --d 64 128 --n 4096 16384 --no-reduced --sigma2-deferred --rounds 3 2>&1 | tee "$out/window-fwd.log" \
             | sed -n '/^| d |/,$p' || rc=1 ;;
    band-first) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py \
             -k "band_first or sigma2_deferred" 2>&1 | tee "$out/band-first-tests.log" | tail -3 || rc=1
           DISTR_FWD_BAND_FIRST=1 python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu \
             tests/ops/test_distr_attn.py -k "matches_reference and table" 2>&1 \
             | tee -a "$out/band-first-tests.log" | tail -3 || rc=1
           python scripts/compare_fwd_configs.py --variants "G2 r1 W128 c.5" "G2 mean W128 c.5" \
             --d 64 128 --n 4096 16384 --no-reduced --sigma2-deferred --band-first --rounds 3 2>&1 \
             | tee "$out/band-first.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    band-deferred) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_sdpa_engine.py 2>&1 \
             | tee "$out/band-deferred-tests.log" | tail -3 || rc=1
           python scripts/bench_window_sdpa.py --tiles 64,32,4,2 64,64,4,2 --deferred 2>&1 \
             | tee "$out/band-deferred-parts.log" | sed -n '/^| d |/,$p' || rc=1
           for round in 1 2; do
             for df in 0 1; do
               echo "== DISTR_BAND_SIGMA2_DEFERRED=$df, round $round"
               DISTR_BAND_SIGMA2_DEFERRED=$df python scripts/bench_attention.py --quick --rep-ms 10 \
                 --variants "distr G=2 rank1 W128 c.5 bm128 sdpa" "distr G=2 mean W128 c.5 bm128 sdpa" \
                 --json "$out/band-deferred-$df-$round.json" 2>&1 | tee -a "$out/band-deferred-calls.log" \
                 | sed -n '/^| d |/,$p' || rc=1
             done
           done ;;
    band-exact) python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests/ops/test_distr_attn.py \
             -k band_exact 2>&1 | tee "$out/band-exact-tests.log" | tail -3 || rc=1
           DISTR_FWD_BAND_EXACT_TILES=1 DISTR_FWD_SIGMA2_DIFF=1 python -m pytest -q -p no:cacheprovider \
             "${workers[@]}" -m gpu tests/ops/test_distr_attn.py -k "matches_reference and table" 2>&1 \
             | tee -a "$out/band-exact-tests.log" | tail -3 || rc=1
           python scripts/compare_fwd_configs.py --variants "G2 r1 W128 c.5" "G2 mean W128 c.5" \
             --d 64 128 --n 4096 16384 --no-reduced --band-exact --rounds 3 2>&1 \
             | tee "$out/band-exact.log" | sed -n '/^| d |/,$p' || rc=1 ;;
    tile-orders) python scripts/compare_fwd_configs.py --variants G1 "G2 mean" "G2 rank1" "G2 r1 W128 c.5" --d 64 128 \
           --n 4096 16384 --causal 1 --no-reduced --tile-orders --rounds 5 2>&1 | tee "$out/tile-orders.log" \
           | sed -n '/^| d |/,$p' || rc=1 ;;
    dq-order) for o in natural reversed natural reversed; do
             echo "DISTR_BWD_DQ_TILE_ORDER=$o" | tee -a "$out/dq-order.log"
             DISTR_BWD_DQ_TILE_ORDER=$o python scripts/bench_attention.py --backward --quick --causal 1 --rep-ms 10 \
               --variants "distr G=1" "distr G=2 mean" "distr G=2 rank1" "distr G=2 rank1 W128 c.5" 2>&1 \
               | tee -a "$out/dq-order.log" | sed -n '/^| d |/,$p' || rc=1
           done ;;
    triton39)  # the newest Triton against the image's: .whl/triton-3.9.0-cp312-min.tar.xz from
           # `bash scripts/pack_triton_for_device.sh 3.9.0` (carry ".whl"); on 3.9 the d=64 grouped kernels' Q_eff
           # prologue compiles with wgmma serialised (C7513), so 3.9's default there is Q_eff by its launch, and the
           # prologue (DISTR_QEFF_PROLOGUE=1) is timed beside it
           t39env=$(triton39_env) && t39=1 || { t39=0; rc=1; echo "triton39: no Triton 3.9 from" \
             ".whl/triton-3.9.0-cp312-min.tar.xz; only the image's Triton is timed" >&2; }
           # (Triton, DISTR_QEFF_PROLOGUE or "", head dims): the prologue switch changes only d=64's grouped configs
           for run in "3.9||64 128" "3.9|1|64" "3.6||64 128"; do
             IFS="|" read -r tr pro dims <<< "$run"
             [ "$tr" = 3.9 ] && [ "$t39" = 0 ] && continue
             echo "== Triton $tr${pro:+, DISTR_QEFF_PROLOGUE=$pro}" | tee -a "$out/triton39.log"
             # shellcheck disable=SC2046,SC2086
             env ${pro:+DISTR_QEFF_PROLOGUE=$pro} \
               $([ "$tr" = 3.9 ] && echo "$t39env") \
               python scripts/bench_attention.py --n 4096 16384 --d $dims --rep-ms 10 \
               --json "$out/triton$tr${pro:+-prologue$pro}.json" --variants "distr G=1" "distr G=2 mean" \
               "distr G=2 rank1" "distr G=2 rank1 W128 c.5 bm128" 2>&1 | tee -a "$out/triton39.log" \
               | sed -n '/^| d |/,$p' | cut -d'|' -f2-11 || rc=1
           done ;;
    triton39-tests)  # the GPU suite on Triton 3.9.0 (carried as for triton39)
           if t39env=$(triton39_env); then
             # shellcheck disable=SC2086
             env $t39env python -m pytest -q -p no:cacheprovider "${workers[@]}" -m gpu tests 2>&1 \
               | tee "$out/gpu-tests-triton39.log" | tail -20 || rc=1
           else echo "triton39-tests: no Triton 3.9 from .whl/triton-3.9.0-cp312-min.tar.xz" >&2; rc=1; fi ;;
    triton39-ptxas)  # Triton 3.9.0 with its ptxas and with the image's Triton's (12.8), then the image's Triton
           legacy=$(python -c "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas'))")
           if t39env=$(triton39_env) && [ -x "$legacy" ]; then
             ptxas_runs triton39-ptxas "64 128" "3.9|" "3.9|TRITON_PTXAS_BLACKWELL_PATH=$legacy" "3.6|" || rc=1
           else echo "triton39-ptxas: no Triton 3.9 from .whl/triton-3.9.0-cp312-min.tar.xz, or no $legacy" >&2; rc=1; fi ;;
    triton39-own-ptxas)  # d=64: Triton 3.9.0 with the 12.9 ptxas it ships (bin/ptxas) for sm_90, then the image's 3.6
           own=/tmp/t39/triton/backends/nvidia/bin/ptxas  # packed only with KEEP_ALL_PTXAS=1
           if t39env=$(triton39_env) && [ -x "$own" ]; then
             ptxas_runs triton39-own-ptxas 64 "3.9|TRITON_PTXAS_BLACKWELL_PATH=$own" "3.6|" || rc=1
           else echo "triton39-own-ptxas: no Triton 3.9 with its $own from .whl/triton-3.9.0-cp312-min.tar.xz" \
             "(KEEP_ALL_PTXAS=1 bash scripts/pack_triton_for_device.sh 3.9.0)" >&2; rc=1; fi ;;
    triton39-scratch)  # d=64 on Triton 3.9.0: Q_eff by its launch (the default there) against the prologue, and the
           # prologue with its tile through a global scratch (no C7513 on 3.9 in CPU compiles; on 3.6 1-6% slower)
           if t39env=$(triton39_env); then
             # shellcheck disable=SC2086
             env $t39env python scripts/compare_fwd_configs.py --variants "G2 mean" "G2 rank1" "G2 r1 W128 c.5" \
               --d 64 --n 4096 16384 --no-reduced --qeff-scratch --rounds 3 2>&1 | tee "$out/triton39-scratch.log" \
               | sed -n '/^| d |/,$p' || rc=1
           else echo "triton39-scratch: no Triton 3.9 from .whl/triton-3.9.0-cp312-min.tar.xz" >&2; rc=1; fi ;;
    grouping-fp32) python scripts/bench_grouping.py --dtype float32 --d 256 128 64 --fusions rank1 --group-sizes 4 8 \
           --power-grams rows dot --rep-ms 20 2>&1 | tee "$out/grouping-fp32.log" \
           | sed -n '/^| d |/,$p' || rc=1 ;;
    host) python scripts/host_overhead.py --calls 300 2>&1 | tee "$out/host-overhead.log" | sed -n '/^| variant/,$p' \
           || rc=1 ;;
    launch)  # whole-model eager prefill with kernel launches through ops/launch.py's memo (1) and Triton's path (0)
           for fl in 1 0 1 0; do
             echo "DISTR_FAST_LAUNCH=$fl"
             DISTR_FAST_LAUNCH=$fl python -m distr_patch bench model --model preset:smollm2-135m --dtype bfloat16 \
               --device cuda --group-sizes 2 --settings paper,recommended \
               --distr-configs configs/smollm2-135m-g2-calibrated-10pct.json --seq-lens 4096 --batch-sizes 4 \
               --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots --output-dir "$out" 2>&1 \
               | tee -a "$out/launch-smollm2.log" | grep "| prefill |" || rc=1
           done
           for fl in 1 0; do
             echo "DISTR_FAST_LAUNCH=$fl"
             DISTR_FAST_LAUNCH=$fl python -m distr_patch bench model --model preset:llama-3.2-1b --dtype bfloat16 \
               --device cuda --group-sizes 2 --settings paper,recommended --seq-lens 4096 --batch-sizes 1 \
               --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots --output-dir "$out" 2>&1 \
               | tee -a "$out/launch-llama.log" | grep "| prefill |" || rc=1
           done ;;
    engines)  # whole-model prefill, each DistrAttention setting on the fused kernel and with DistrConfig.engine="sdpa"
           python - "$out" <<'PY' || rc=1
import sys
from distr_patch import DistrConfig
out = sys.argv[1]
DistrConfig.paper(engine="sdpa").save(f"{out}/paper-sdpa.json")
DistrConfig(engine="sdpa").save(f"{out}/recommended-sdpa.json")
DistrConfig.load("configs/smollm2-135m-g2-calibrated-10pct.json").replace(engine="sdpa").save(f"{out}/calibrated-sdpa.json")
PY
           python -m distr_patch bench model --model preset:smollm2-135m --dtype bfloat16 --device cuda --group-sizes 2 \
             --settings paper,recommended --distr-configs "$out/paper-sdpa.json,$out/recommended-sdpa.json,$out/calibrated-sdpa.json,configs/smollm2-135m-g2-calibrated-10pct.json" \
             --seq-lens 4096 --batch-sizes 4 --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots \
             --output-dir "$out" 2>&1 | tee "$out/engines-smollm2.log" | grep "| prefill |" || rc=1
           python -m distr_patch bench model --model preset:llama-3.2-1b --dtype bfloat16 --device cuda --group-sizes 2 \
             --settings paper,recommended --distr-configs "$out/paper-sdpa.json,$out/recommended-sdpa.json" \
             --seq-lens 4096 --batch-sizes 1 --gen-tokens 1 --gen-prompt-len 16 --repeats 10 --no-plots \
             --output-dir "$out" 2>&1 | tee "$out/engines-llama.log" | grep "| prefill |" || rc=1 ;;
    window) for n in 4096 16384; do python scripts/bench_window_sdpa.py --n $n 2>&1 | tee -a "$out/window-parts.log" \
             | sed -n '/^| d |/,$p' || rc=1; done
           python scripts/bench_attention.py --n 4096 16384 --rep-ms 20 --json "$out/window.json" \
             --variants "distr G=2 rank1 W128 c.5 bm128" "distr G=2 mean W128 c.5 bm128" \
             "distr G=2 rank1 W128 c.5 bm128 sdpa" "distr G=2 mean W128 c.5 bm128 sdpa" "distr G=2 mean sdpa" \
             "distr G=2 rank1 sdpa" "distr G=2 rank1 W128 c.5 bm128 sdpa torch flip" \
             "distr G=2 mean W128 c.5 bm128 sdpa torch flip" 2>&1 | tee "$out/window.log" \
             | sed -n '/^| d |/,$p' || rc=1 ;;
    probe-dqk) python scripts/probe_reduced_dqk.py --json "$out/probe-dqk.json" 2>&1 | tee "$out/probe-dqk.log" \
           | sed -n '/^| d |/,$p' || rc=1 ;;
    ncu-grouping|ncu-attention)
           what="${step#ncu-}"; ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
           if [ -z "$ncu" ]; then echo "ncu not found" >&2; rc=1; continue; fi
           if [ "$what" = grouping ]; then kern="_grouping"; args=(--what grouping)
           else kern="_distr_fwd|sdpa|flash"; args=(--what attention --d 64 128 --causal 0 1); fi
           "$ncu" --clock-control none -k "regex:$kern" --section SpeedOfLight --section Occupancy \
             --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
             python scripts/profile_launches.py "${args[@]}" > "$out/ncu-$what.txt" 2>&1 || rc=1
           grep -E "^  [_a-zA-Z].*CC 9|Duration|Registers Per|Achieved Occupancy|Memory Throughput|DRAM Through|L1/TEX Cache|Compute \(SM\) Th|Warp Cycles Per Issued" \
             "$out/ncu-$what.txt" | sed 's/  */ /g' ;;
    probe-sdpa) { python scripts/probe_sdpa_layout.py; python scripts/probe_sdpa_layout.py --batch 4 --heads 9 --kv-heads 3; } \
           2>&1 | tee "$out/probe-sdpa.log" | grep "^|\|^B=" || rc=1 ;;
    *) known=$(grep -oE '^    [a-z0-9|-]+\)' "$0" | tr -d ' )' | tr '|\n' '  ')  # this case's own labels
       echo "unknown step '$step' (one of: $known)" >&2; exit 2 ;;
  esac
done
exit $rc
