#!/usr/bin/env bash
# The first GPU run as one prepared command; writes ONE JSON, $OUT/gpu_check.json (OUT defaults to ./gpu-out).
#
#   bash benchmarks/gpu_wheels.sh              # beforehand, on a machine with a registry: .whl/ (~7 MiB)
#   bash benchmarks/gpu_check.sh               # on the GPU machine (no registry): ~6-8 min, never more than 8
#   bash benchmarks/gpu_check.sh --dry-run     # CPU, tiny preset, tiny counts (~35 s): the same steps
#
# Steps, each time-boxed inside one overall budget (470 s; --budget S):
#   wheels     pip install --no-index --no-deps --target TMP/site .whl/*.whl (unzip if pip is missing);
#              PYTHONPATH=TMP/site:REPO
#   env        python, torch, CUDA, GPU name and memory, cores; the imports, with where each came from
#   build      phaseforge-build shards on all cores (--workers $(nproc)): full samples and structures-only
#   train      benchmarks/gpu_train.py: paper preset, bf16, recycling n ~ U{1,2,3}: samples/s of the model alone
#              and fed by the shard loader (keeps up?), peak GPU memory, F of a structures-only batch on the GPU
#   structures the structures-only pipeline, F computed on the GPU (--sf device), fed to the model
#   otf        on-the-fly generation, when `phaseforge-build shards --help` offers --on-the-fly (detected, not
#              assumed): manifests without shards, generated in the loader workers (full, and structures-only
#              with F on the GPU)
# A step that fails or runs out of time is recorded (exit code, last lines of its stderr) and the others go on.
# --dry-run also makes every package the GPU machine lacks (not torch and its dependencies, numpy, numba, h5py,
# scipy, click, tqdm, msgpack, triton, nor the wheels) unimportable in every step, so a dependency missing from
# .whl/ fails here, not there.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DRY=0 BUDGET=470 PY=
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if [ -z "$PY" ]; then
    for c in python3 python; do
        if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$(command -v "$c"); break; fi
    done
fi
[ -n "$PY" ] || { echo "error: no python with torch found; give --python PATH" >&2; exit 2; }
OUTDIR=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/phaseforge-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/steps" "$WORK/data" "$WORK/site"
T0=$(date +%s.%N)
NPROC=$(nproc)
if [ "$DRY" = 1 ]; then
    NFULL=400 SFULL=100 NSTR=256 SSTR=64 WORKERS=2 TRAIN_ARGS=(--dry-run)
else  # one core each for the training process and the system; the rest are loader workers
    NFULL=24000 SFULL=1000 NSTR=12288 SSTR=512 WORKERS=$((NPROC > 4 ? NPROC - 2 : 2)) TRAIN_ARGS=(--steps 200)
fi
GPU_HAS="torch numpy numba llvmlite h5py scipy click tqdm msgpack triton filelock typing-extensions sympy mpmath
networkx jinja2 markupsafe fsspec setuptools pip"
WHEEL_PKGS="gemmi ase webdataset braceexpand pyyaml"

# Every python step runs through this runner: in --dry-run it first makes the GPU machine's absent packages
# unimportable (forked builder and loader workers inherit that); then it runs `-m module ...` or `-c code`.
cat > "$WORK/run.py" <<'EOF'
import runpy, sys
for name in filter(None, sys.argv[1].split(",")):  # None in sys.modules: `import` raises ModuleNotFoundError
    sys.modules.setdefault(name, None)             # and importlib.util.find_spec says absent, as on that machine
flag, target, *rest = sys.argv[2:]
sys.argv = [target, *rest]
if flag == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<gpu_check>", "exec"), {"__name__": "__main__"})
EOF
ABSENT=
if [ "$DRY" = 1 ]; then
    ABSENT=$("$PY" - "$GPU_HAS $WHEEL_PKGS phaseforge" <<'EOF'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(n) for n in sys.argv[1].split()}
ours = {"builder", "manifests", "training", "evaluation", "benchmarks", "tests"}
print(",".join(sorted(name for name, dists in md.packages_distributions().items()
                      if name.isidentifier() and not name.startswith("_") and name not in ours
                      and name not in sys.stdlib_module_names
                      and not any(norm(d) in have or norm(d).startswith("nvidia-") for d in dists))))
EOF
)
fi
PYRUN=("$PY" "$WORK/run.py" "$ABSENT")

left() { awk -v a="$T0" -v b="$(date +%s.%N)" -v t="$BUDGET" 'BEGIN { printf "%d", t - (b - a) }'; }
# step NAME CAP CMD...: run CMD with a timeout of min(CAP, what is left of the budget - 15 s for the report);
# stdout, stderr and {rc, seconds, timed_out} land in $WORK/steps/NAME.*
step() {
    local name=$1 cap=$2 t lim rc
    shift 2
    lim=$(( $(left) - 15 ))
    [ "$lim" -gt "$cap" ] && lim=$cap
    if [ "$lim" -lt 10 ]; then
        echo '{"skipped": "out of time"}' > "$WORK/steps/$name.meta"
        echo "[gpu_check] $name: skipped (out of time)"
        return 1
    fi
    echo "[gpu_check] $name (≤ ${lim}s): $*" | head -1 | cut -c1-200
    t=$(date +%s.%N)
    timeout --kill-after=10 "$lim" "$@" > "$WORK/steps/$name.out" 2> "$WORK/steps/$name.err"
    rc=$?
    printf '{"rc": %d, "seconds": %s, "timed_out": %s, "limit_s": %d}\n' "$rc" \
        "$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" \
        "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" "$lim" > "$WORK/steps/$name.meta"
    [ "$rc" = 0 ] || { echo "[gpu_check] $name: exit $rc"; tail -3 "$WORK/steps/$name.err"; }
    return "$rc"
}

command -v nvidia-smi >/dev/null && step nvidia_smi 15 nvidia-smi \
    --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader

# --- wheels into a temporary prefix (only when they fit this interpreter: the dry run may be another python)
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
shopt -s nullglob
WHL=("$ROOT"/.whl/*.whl)
FIT=()
for w in "${WHL[@]}"; do
    case $(basename "$w") in *-py3-none-any.whl|*-py2.py3-none-any.whl|*-"$PYTAG"-*) FIT+=("$w") ;; esac
done
if [ "${#WHL[@]}" -gt 0 ] && [ "${#FIT[@]}" -eq "${#WHL[@]}" ]; then
    if "$PY" -m pip --version >/dev/null 2>&1; then
        step wheels 90 "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "${FIT[@]}"
    else
        step wheels 90 bash -c 'for w in "${@:2}"; do "$0" -m zipfile -e "$w" "$1" || exit 1; done' \
            "$PY" "$WORK/site" "${FIT[@]}"
    fi
else
    printf '{"skipped": "%s"}\n' "$([ "${#WHL[@]}" = 0 ] && echo "no .whl/ (run benchmarks/gpu_wheels.sh)" \
        || echo "the wheels are not for $PYTAG: using this interpreter's packages")" > "$WORK/steps/wheels.meta"
fi
export PYTHONPATH=$WORK/site:$ROOT
step env 60 "${PYRUN[@]}" -c '
import importlib, json, os, platform, torch
cuda = torch.cuda.is_available()
out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
       "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
       "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
       "imports": {}}
for name in ["gemmi", "ase.data", "webdataset", "yaml", "braceexpand", "numpy", "numba", "h5py", "scipy", "click",
             "tqdm", "builder.build", "training.data", "matplotlib"]:  # matplotlib: absent there, unneeded
    try:
        m = importlib.import_module(name)
        out["imports"][name] = {"version": getattr(m, "__version__", None), "file": getattr(m, "__file__", None)}
    except Exception as exc:
        out["imports"][name] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))'

# --- data, built on all cores
D=$WORK/data
step build_full 120 "${PYRUN[@]}" -m builder.cli shards --strategy lognormal-molecules --count "$NFULL" \
    --shard-size "$SFULL" --seed 1 --workers "$NPROC" --out "$D/full"
step build_structures 60 "${PYRUN[@]}" -m builder.cli shards --strategy lognormal-molecules --count "$NSTR" \
    --shard-size "$SSTR" --seed 2 --structures-only --workers "$NPROC" --out "$D/structures"

# --- training measurements
TRAIN=("${PYRUN[@]}" -m benchmarks.gpu_train "${TRAIN_ARGS[@]}" --workers "$WORKERS" --data "$D/gpu_train")
step train 200 "${TRAIN[@]}" --train "$D/full" --structures "$D/structures" --out "$WORK/steps/train.json"
step structures 90 "${TRAIN[@]}" --train "$D/structures" --sf device --measure loader,e2e --cap-s 30 \
    --out "$WORK/steps/structures.json"

# --- on-the-fly generation, if the builder offers it by now
OTF=0
"${PYRUN[@]}" -m builder.cli shards --help 2>/dev/null | grep -q -- '--on-the-fly' && OTF=1
if [ "$OTF" = 1 ]; then
    OTF_BUILD=("${PYRUN[@]}" -m builder.cli shards --strategy lognormal-molecules --seed 3 --on-the-fly)
    step otf_manifest 30 "${OTF_BUILD[@]}" --count "$NFULL" --shard-size "$SFULL" --out "$D/otf"
    step otf_structures_manifest 30 "${OTF_BUILD[@]}" --count "$NSTR" --shard-size "$SSTR" --structures-only \
        --out "$D/otf-structures"
    step otf 80 "${TRAIN[@]}" --train "$D/otf" --measure loader,e2e --cap-s 25 --out "$WORK/steps/otf.json"
    step otf_structures 80 "${TRAIN[@]}" --train "$D/otf-structures" --sf device --measure loader,e2e \
        --cap-s 25 --out "$WORK/steps/otf_structures.json"
fi

# --- one JSON
"$PY" - "$WORK/steps" "$OUTDIR/gpu_check.json" "$DRY" "$OTF" "$BUDGET" "$T0" "$NFULL" "$NSTR" "$NPROC" \
    "$WORKERS" "$ABSENT" <<'EOF'
import json, sys, time
from pathlib import Path
steps, out, dry, otf, budget, t0, nfull, nstr, nproc, workers, absent = sys.argv[1:]
d = Path(steps)

def load(name, suffix):
    p = d / f"{name}{suffix}"
    if not p.is_file():
        return None
    text = p.read_text().strip()
    if not text:
        return None
    for candidate in (text, text.splitlines()[-1]):  # a JSON file, or output whose last line is JSON
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    return text[-2000:]

names = sorted({p.name.split(".")[0] for p in d.iterdir()})
report = {"check": "gpu_check", "dry_run": dry == "1", "budget_s": int(budget), "on_the_fly_offered": otf == "1",
          "cores": int(nproc), "loader_workers": int(workers), "absent_in_dry_run": absent.split(",") if absent else [],
          "steps": {}}
for n in names:
    meta = load(n, ".meta") or {}
    err = (d / f"{n}.err").read_text().strip().splitlines()[-5:] if (d / f"{n}.err").is_file() else []
    if meta.get("rc"):
        meta["stderr_tail"] = err
    report["steps"][n] = meta
for n in ("env", "nvidia_smi"):
    report[n] = load(n, ".out")
for n in ("train", "structures", "otf", "otf_structures"):
    report[n] = load(n, ".json")
for n, count in (("build_full", nfull), ("build_structures", nstr)):
    m = report["steps"].get(n, {})
    if m.get("rc") == 0:
        m["samples_per_s_all_cores"] = round(int(count) / m["seconds"], 1)
t, s = report.get("train") or {}, {}
model = (t.get("model") or {}).get("samples_per_s")
s["model_samples_per_s"] = model
s["peak_memory_gib"] = (t.get("model") or {}).get("peak_memory_gib")
for n in ("train", "structures") + (("otf", "otf_structures") if otf == "1" else ()):
    p = (report.get(n) or {}).get("pipeline") or {}
    e2e = (p.get("e2e") or {}).get("samples_per_s")
    s[n] = {"loader_samples_per_s": p.get("loader_samples_per_s"), "e2e_samples_per_s": e2e,
            "keeps_up": (e2e >= 0.9 * model) if (e2e and model) else None}
s["sf_structures_per_s"] = (t.get("sf_on_device") or {}).get("structures_per_s")
s["failed_steps"] = [n for n, m in report["steps"].items() if m.get("rc")]
report["summary"] = s
report["total_s"] = round(time.time() - float(t0), 1)
Path(out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
print(json.dumps(s, sort_keys=True))
print(f"[gpu_check] wrote {out} after {report['total_s']} s")
EOF
