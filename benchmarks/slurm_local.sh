#!/usr/bin/env bash
# A real Slurm on this machine, driven through the shipped examples/slurm scripts.
#
#   bash benchmarks/slurm_local.sh [--python PY] [--count 2000] [--shard-size 100] [--timeout 600] [--keep]
#
# Installs Slurm from Debian's packages when it is missing (slurm-wlm and munge, whose authentication Slurm's
# daemons use; needs root), starts munged, slurmctld and slurmd on 127.0.0.1 with everything (config, keys,
# state, spool, logs) in a temporary directory, then:
#   1. examples/slurm/submit.sh 4 ...: a 4-task array build (--task auto/4) and the dependent finalize;
#   2. build.sbatch auto with --array=1-13:4: four tasks whose position comes from SLURM_ARRAY_TASK_MIN/_STEP;
#   3. deletes one of task 2's shards and its part-manifest, resubmits task 2 alone (--array=2), finalizes;
# and compares every manifest and shard with a one-process build byte for byte. Prints the result and the wall
# times, and stops only the daemons it started (from their pid files in its own directory). Exit 0 when all
# three builds are byte-identical to the one-process build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || PY=python3
COUNT=2000 SHARD=100 TIMEOUT=600 KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --python) PY=$2; shift 2 ;;
        --count) COUNT=$2; shift 2 ;;
        --shard-size) SHARD=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

say() { printf '[slurm_local %(%H:%M:%S)T] %s\n' -1 "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "error: Slurm is not installed and installing it needs root: apt-get install -y slurm-wlm munge" >&2
        exit 2
    fi
    say "installing slurm-wlm and munge from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
[ "$(id -u)" = 0 ] || { echo "error: run as root (the daemons run as SlurmUser=root here)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/phaseforge-slurm.XXXXXX)
chmod 711 "$TMP"
export SLURM_CONF=$TMP/slurm.conf
teardown() {
    set +e
    if [ -f "$TMP/slurmctld.pid" ]; then scancel --quiet --user root 2>/dev/null; fi
    for d in slurmd slurmctld; do
        [ -f "$TMP/$d.pid" ] && kill "$(cat "$TMP/$d.pid")" 2>/dev/null
    done
    for d in slurmd slurmctld; do  # wait (bounded) until they are gone
        for _ in $(seq 50); do
            [ -f "$TMP/$d.pid" ] && kill -0 "$(cat "$TMP/$d.pid")" 2>/dev/null || break
            sleep 0.2
        done
    done
    [ -S "$TMP/munge/munge.socket" ] && munged --stop --socket="$TMP/munge/munge.socket" >/dev/null 2>&1
    if [ "$KEEP" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap teardown EXIT

# --- munge: a key of our own and a daemon on our own socket
mkdir -m 711 "$TMP/munge"
mungekey --create --keyfile="$TMP/munge/munge.key"
munged --force --socket="$TMP/munge/munge.socket" --key-file="$TMP/munge/munge.key" \
    --log-file="$TMP/munge/munged.log" --pid-file="$TMP/munge/munged.pid" --seed-file="$TMP/munge/munged.seed"

# --- a one-node cluster on 127.0.0.1; ports picked free; no cgroups (a container): linuxproc + task/none
read -r CTLD_PORT SLURMD_PORT < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
HOST=$(hostname -s)
mkdir -p "$TMP/state" "$TMP/spool" "$TMP/log" "$TMP/jobs" "$TMP/bin"
cat > "$SLURM_CONF" <<EOF
ClusterName=phaseforge-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$TMP/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
    sleep 0.5
done
[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] || { echo "error: the node did not come up; see $TMP/log" >&2; KEEP=1; exit 1; }
say "Slurm $(sinfo -V | cut -d' ' -f2) up: node $HOST, 2 CPUs, partition local (ports $CTLD_PORT/$SLURMD_PORT)"

# The examples call phaseforge-build; here it is this checkout's code (sbatch exports PATH and PYTHONPATH).
printf '#!/bin/sh\nexec "%s" -m builder.cli "$@"\n' "$PY" > "$TMP/bin/phaseforge-build"
chmod +x "$TMP/bin/phaseforge-build"
export PATH=$TMP/bin:$PATH PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
OPTS=(--strategy lognormal-molecules --count "$COUNT" --shard-size "$SHARD" --seed 11)
cd "$TMP/jobs"

state() { scontrol show job "$1" -o 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | sort -u | paste -sd, -; }
wait_for() {  # JSTATE = the final state of job $1; bounded by --timeout from the first submission
    while :; do
        JSTATE=$(state "$1")
        case $JSTATE in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) return ;; esac
        if awk -v a="$T_ALL" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
            echo "error: job $1 still ${JSTATE:-unknown} after ${TIMEOUT}s; logs kept in $TMP" >&2
            KEEP=1
            exit 1
        fi
        sleep 0.5
    done
}
runtimes() {  # per-task run times of array job $1, as reported by Slurm
    scontrol show job "$1" -o | sed -n 's/.*ArrayTaskId=\([0-9]*\).*RunTime=\([0-9:-]*\).*/\1:\2/p' | sort -n \
        | paste -sd' ' -
}
same() {  # byte-for-byte comparison of manifest.json and every shard
    local a=$1 b=$2 f
    cmp -s "$a/manifest.json" "$b/manifest.json" || return 1
    [ "$(cd "$a" && ls shard-*)" = "$(cd "$b" && ls shard-*)" ] || return 1
    for f in "$a"/shard-*; do cmp -s "$f" "$b/$(basename "$f")" || return 1; done
}
T_ALL=$(now)
RESULT=0
# verdict runs in $(...), a subshell: the caller records a DIFFERENT in RESULT
verdict() { if same "$TMP/one" "$1"; then echo IDENTICAL; else echo DIFFERENT; fi; }

# --- the reference: one process
t=$(now)
phaseforge-build shards "${OPTS[@]}" --workers 1 --out "$TMP/one" 2>/dev/null >/dev/null
T_ONE=$(since "$t")
SHARDS=$(ls "$TMP/one" | grep -c '^shard-')
say "one-process build: $COUNT samples, $SHARDS shards, ${T_ONE}s"

# --- 1. the shipped submit.sh: a 4-task array (--task auto/4) + finalize afterok
t=$(now)
line=$("$ROOT/examples/slurm/submit.sh" 4 "$TMP/array" "${OPTS[@]}")
read -r ARRAY FINAL < <(echo "$line" | sed 's/build array \([0-9]*\) .*finalize \([0-9]*\)/\1 \2/')
say "submit.sh: $line"
wait_for "$FINAL"; S1=$JSTATE
T_ARRAY=$(since "$t")
R1=$(runtimes "$ARRAY")
say "array $ARRAY + finalize $FINAL: finalize $S1 after ${T_ARRAY}s (submit to manifest); task run times $R1"
V1=$(verdict "$TMP/array")
[ "$V1" = IDENTICAL ] || RESULT=1
say "manifest and $SHARDS shards vs the one-process build: $V1"
grep -h '^task ' phaseforge-build-"$ARRAY"_*.out | sed 's/^/    /'

# --- 2. build.sbatch auto, an array that starts at 1 with step 4: positions from SLURM_ARRAY_TASK_MIN/_STEP
t=$(now)
STEP=$(sbatch --parsable --array=1-13:4 "$ROOT/examples/slurm/build.sbatch" auto "$TMP/step" "${OPTS[@]}")
STEPF=$(sbatch --parsable --dependency="afterok:$STEP" --kill-on-invalid-dep=yes \
    "$ROOT/examples/slurm/finalize.sbatch" "$TMP/step")
wait_for "$STEPF"; S2=$JSTATE
T_STEP=$(since "$t")
say "--array=1-13:4 with --task auto: finalize $S2 after ${T_STEP}s; task run times $(runtimes "$STEP")"
V2=$(verdict "$TMP/step")
[ "$V2" = IDENTICAL ] || RESULT=1
say "manifest and shards vs the one-process build: $V2"
grep -h '^task ' phaseforge-build-"$STEP"_*.out | sed 's/^/    /'

# --- 3. task 2 "died" after its first shards: its last shard, its part-manifest and the manifest are gone;
# finalize names the missing range; task 2 resubmitted alone keeps the shards that check and builds the rest
read -r A2 B2 < <(grep -h '^task 2/4' phaseforge-build-"$ARRAY"_2.out | sed 's/.*shards \([0-9]*\):\([0-9]*\) .*/\1 \2/')
rm -f "$TMP/array/manifest.json" "$TMP/array/$(printf 'manifest.part-%06d-%06d.json' "$A2" "$B2")"
rm -f "$TMP/array/$(printf 'shard-%06d.tar' $((B2 - 1)))"
FIRST=$TMP/array/$(printf 'shard-%06d.tar' "$A2")
M0=$(stat -c %y "$FIRST")
FIN=$(phaseforge-build finalize "$TMP/array" 2>&1 || true)
say "task 2 (shards $A2:$B2) lost shard $((B2 - 1)) and its part-manifest; finalize says: $FIN"
t=$(now)
RE=$(sbatch --parsable --array=2 "$ROOT/examples/slurm/build.sbatch" 4 "$TMP/array" "${OPTS[@]}")
REF=$(sbatch --parsable --dependency="afterok:$RE" --kill-on-invalid-dep=yes \
    "$ROOT/examples/slurm/finalize.sbatch" "$TMP/array")
wait_for "$REF"; S3=$JSTATE
T_RE=$(since "$t")
say "resubmitted task 2 alone (--array=2, auto/4) + finalize: $S3 after ${T_RE}s"
V3=$(verdict "$TMP/array")
[ "$V3" = IDENTICAL ] || RESULT=1
KEPT=$([ "$(stat -c %y "$FIRST")" = "$M0" ] && echo kept || echo rebuilt)
say "manifest and shards vs the one-process build: $V3 (its shard $A2, which checked: $KEPT)"

say "summary: one process ${T_ONE}s; 4-task array on 2 CPUs ${T_ARRAY}s ($V1); stepped array ${T_STEP}s ($V2);" \
    "resubmitted task ${T_RE}s ($V3)"
exit $RESULT
