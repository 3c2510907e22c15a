#!/usr/bin/env bash
# tunebench on a Slurm cluster: one array task per shard, then one merge job.
#   sbatch --array=0-3 docs/cluster/slurm-array.sh          (4 shards)
#   sbatch --dependency=afterok:<array job id> docs/cluster/slurm-merge.sh
# Run from the repository's root on a shared file system, after
# `pnpm install --frozen-lockfile && pnpm build` there.
#SBATCH --job-name=tunebench
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=02:00:00
#SBATCH --output=reports/slurm-%A_%a.log
# On a GPU partition add: #SBATCH --gres=gpu:1 (each shard trains on its own GPU)
set -euo pipefail
SUITE=${TUNEBENCH_SUITE:-cpu}                  # a built-in suite or a suite JSON file
OUT=${TUNEBENCH_OUT:-reports/$SUITE-shards}    # every shard writes here (shared file system)
CACHE=${TUNEBENCH_CACHE_DIR:-.tunebench-cache} # one pretrained base for all shards
TB=${TUNEBENCH_CLI:-node packages/bench/dist/cli.js}
export TUNEBENCH_THREADS=${TUNEBENCH_THREADS:-${SLURM_CPUS_PER_TASK:-}}
# --shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT; --resume makes a requeued task go on
$TB --suite "$SUITE" --shard auto --cache "$CACHE" --out "$OUT" --resume
