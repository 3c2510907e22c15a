#!/usr/bin/env bash
# The merge step after every array task of slurm-array.sh finished:
#   sbatch --dependency=afterok:<array job id> docs/cluster/slurm-merge.sh
#SBATCH --job-name=tunebench-merge
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=reports/slurm-merge-%j.log
set -euo pipefail
SUITE=${TUNEBENCH_SUITE:-cpu}
OUT=${TUNEBENCH_OUT:-reports/$SUITE-shards}
TB=${TUNEBENCH_CLI:-node packages/bench/dist/cli.js}
$TB merge "${TUNEBENCH_MERGED:-$OUT/merged}" "$OUT"
