#!/usr/bin/env bash
# Start N batch-embed workers as N SkyPilot managed jobs, embed-w0 … embed-w{N-1}.
#
#   examples/skypilot/launch.sh N [TASK_YAML]
#
# Each job runs TASK_YAML (default: embed.yaml beside this script) with WORKER_ID=i and
# NUM_WORKERS=N. Keep N the same for the whole run: it decides which rows each worker owns, and
# the output folders are named after it. Running this again with the same N starts the workers
# again; each resumes from its checkpoint, and finished ones exit at once.
set -euo pipefail

usage() {
    echo "usage: $0 N [TASK_YAML]   (N: number of workers, a positive integer)" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
n=$1
[[ $n =~ ^[1-9][0-9]*$ ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
task=${2:-$here/embed.yaml}
[[ -f $task ]] || { echo "$0: no task file $task" >&2; exit 2; }
task=$(cd "$(dirname "$task")" && pwd)/$(basename "$task")

# The task uploads target/cuda/batch-embed, a path relative to where `sky` runs: the repo root.
cd "$here/../.."
if [[ ! -f target/cuda/batch-embed ]]; then
    echo "$0: target/cuda/batch-embed is missing; build it first with scripts/build-cuda.sh" >&2
    exit 1
fi

# --async: submit and return without waiting for each job to start (the SkyPilot API server
# queues the requests), so launching hundreds of workers takes seconds.
for ((i = 0; i < n; i++)); do
    sky jobs launch -y --async -n "embed-w$i" --env "WORKER_ID=$i" --env "NUM_WORKERS=$n" "$task"
done

cat <<EOF
Submitted $n workers (embed-w0 … embed-w$((n - 1))).
Watch them:          sky jobs queue              (and: sky api status, for requests still queued)
Follow one:          sky jobs logs -n embed-w0
Rows done, per worker, where the output bucket is visible (mounted or synced):
                     batch-embed status OUTPUT
When all are done:   batch-embed verify OUTPUT
EOF
