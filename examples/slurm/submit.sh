#!/bin/bash
# Submit an N-task array build and its finalize job, which starts only when every task has succeeded.
#
#   examples/slurm/submit.sh N OUT --strategy lognormal-molecules --count 100000000 --shard-size 10000 --seed 0
#
# Prints the two job ids. Extra sbatch options (partition, account, time) go in SBATCH_* variables or in the
# #SBATCH lines of build.sbatch and finalize.sbatch.
set -euo pipefail
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: submit.sh N OUT [phaseforge-build shards options]   (N: number of array tasks)" >&2
    exit 2
fi
tasks=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable --array="0-$((tasks - 1))" "$here/build.sbatch" "$tasks" "$out" "$@")
array=${array%%;*}  # --parsable prints JOBID or JOBID;CLUSTER
final=$(sbatch --parsable --dependency="afterok:$array" --kill-on-invalid-dep=yes "$here/finalize.sbatch" "$out")
echo "build array $array (${tasks} tasks), finalize ${final%%;*}"
