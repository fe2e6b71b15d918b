#!/usr/bin/env bash
# Every deep host (image tower trained every step) at B = 4 and B = 32, alone and with SpecPL,
# each against its naive reference step in the same process. Prints markdown table rows.
#   bash bench/deep_hosts.sh ViT-B-32 cpu            # the CPU figures in bench/RESULTS.md
#   bash bench/deep_hosts.sh ViT-B-16 cuda           # what bench/gpu.sh runs
set -euo pipefail
model=${1:-ViT-B-32}
device=${2:-cpu}
shift 2 || true
cd "$(dirname "$0")/.."
echo "| method | model | device | batch | classes | mode | naive ms | ours ms | speed-up | FLOP floor ms | ours / floor | first step |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for host in ivlp maple promptsrc mmrl; do
  for batch in 4 32; do
    for booster in "" "--booster specpl"; do
      python bench/train_step.py --model "$model" --device "$device" --host "$host" $booster --batch "$batch" --markdown "$@"
    done
  done
done
