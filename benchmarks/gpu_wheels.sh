#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels the GPU check needs and the GPU machine lacks,
# for CPython 3.12 manylinux x86-64, into .whl/ at the repository root (git-ignored; `run`'s carry takes it).
#
#   bash benchmarks/gpu_wheels.sh [--python-version 3.12]
#
# The GPU machine has CPython 3.12, torch 2.11 + CUDA 13 (with torch's own dependencies), numpy, numba, h5py,
# scipy, click, tqdm, msgpack and triton, and no registry. It lacks gemmi (symmetry, form factors), ase
# (covalent radii) and webdataset (tar streaming), and webdataset needs braceexpand and PyYAML. ase declares
# matplotlib too, but only its plotting imports it (benchmarks/gpu_check.sh --dry-run blocks it to make sure).
# The versions are the ones the test suite runs with. The total must stay within 64 MiB (checked at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYV=3.12
[ "${1:-}" = --python-version ] && PYV=$2
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || PY=python3
WHEELS=(gemmi==0.7.5 ase==3.29.0 webdataset==1.0.2 braceexpand==0.1.7 PyYAML==6.0.3)
DEST=$ROOT/.whl

mkdir -p "$DEST"
for w in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST" "$w"
done
ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024)) KiB in $(ls "$DEST"/*.whl | wc -l) wheels (limit 65536 KiB)"
[ "$total" -le $((64 * 1024 * 1024)) ] || { echo "error: the wheels exceed 64 MiB" >&2; exit 1; }
