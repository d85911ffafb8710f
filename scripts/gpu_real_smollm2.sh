#!/usr/bin/env bash
# Real SmolLM2-135M weights and the Lee text on the GPU machine, whose image has neither (nor `gguf`).
# The GGUF (98 MB) is larger than one device call's carry (64 MiB), so it travels in two halves, in two
# calls made back to back while the machine stays warm (30 s):
#
#   bash scripts/gpu_real_smollm2.sh prepare          # here: .carry/a (half 1, gguf wheel, Lee text), .carry/b
#   run(carry=[".carry/a"], command="bash scripts/gpu_real_smollm2.sh stage")
#   run(carry=[".carry/b"], command="bash scripts/gpu_real_smollm2.sh run finetune --model \$MODEL --data \$DATA ...")
#
# `run` joins the halves to $MODEL (/tmp/real/smollm2.gguf), sets $DATA (the Lee corpus file), installs the
# gguf wheel and runs `python -m distr_patch` with the rest of its arguments (quote $MODEL/$DATA so they expand
# there). No `datasets` is needed for a local text file.
set -euo pipefail
real=/tmp/real
case "${1:-}" in
  prepare)
    gguf=$(python -c "from distr_patch.models.loading import MODEL_ALIASES, locate_alias
import os; d, f = locate_alias(MODEL_ALIASES['smollm2-135m']); print(os.path.join(d, f))")
    lee=$(python -c "from distr_patch.data import locate_corpus; print(locate_corpus('lee'))")
    rm -rf .carry && mkdir -p .carry/a .carry/b
    grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
    split -n 2 -d "$gguf" .carry/part-
    mv .carry/part-00 .carry/a/ && mv .carry/part-01 .carry/b/
    cp "$lee" .carry/a/
    python -m pip download -q --no-deps --only-binary=:all: -d .carry/a gguf==0.19.0
    du -sh .carry/a .carry/b ;;
  stage)
    mkdir -p "$real" && cp .carry/a/* "$real"/ && ls -la "$real" ;;
  run)
    shift
    cat "$real"/part-00 .carry/b/part-01 > "$real"/smollm2.gguf
    python -m pip install -q --no-index --no-deps --target /tmp/site "$real"/gguf-*.whl
    export PYTHONPATH="/tmp/site:$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export MODEL="$real/smollm2.gguf" DATA="$real/$(cd "$real" && ls *.cor | head -1)"
    args=()
    for a in "$@"; do  # the literal words $MODEL / $DATA (quoted where the call was written) become the paths
      case "$a" in '$MODEL') args+=("$MODEL") ;; '$DATA') args+=("$DATA") ;; *) args+=("$a") ;; esac
    done
    python -m distr_patch "${args[@]}" ;;
  *) echo "usage: $0 prepare | stage | run ARGS..." >&2; exit 2 ;;
esac
