#!/usr/bin/env bash
# Each booster (and the stack maple + caspl + specpl) on MaPLe at B = 4, each against its naive
# reference step in the same process. Prints markdown table rows.
#   bash bench/boosters.sh ViT-B-32 cpu            # the CPU figures in bench/RESULTS.md
#   bash bench/boosters.sh ViT-B-16 cuda           # what bench/gpu.sh runs
set -euo pipefail
model=${1:-ViT-B-32}
device=${2:-cpu}
shift 2 || true
cd "$(dirname "$0")/.."
echo "| method | model | device | batch | classes | mode | naive ms | ours ms | speed-up | FLOP floor ms | ours / floor | first step |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for boosters in "" "--booster specpl" "--booster caspl" "--booster dapt" "--booster isp" "--booster caspl --booster specpl"; do
  python bench/train_step.py --model "$model" --device "$device" --host maple $boosters --batch 4 --markdown "$@"
done
