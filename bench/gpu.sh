#!/usr/bin/env bash
# Every GPU figure of the performance work in one command, each against its naive reference step
# in the same process, on an H100 or H200 with no network; appends a dated table to
# bench/RESULTS.md (and writes it to $OUT/gpu-results.md when $OUT is set). About 5 minutes.
#
#   bash bench/gpu.sh --fetch-wheels   # here, with a package index: the wheels the GPU image lacks, into .whl/
#   bash bench/gpu.sh                  # there (carry .whl/): installs them offline, then measures
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(open_clip_torch==3.3.0 ftfy wcwidth diffusers==0.42.1)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    pip download --no-deps --dest .whl "${WHEELS[@]}"
    exit 0
fi
python3 -c "import open_clip, diffusers" 2>/dev/null || pip install --quiet --no-index --no-deps --find-links .whl "${WHEELS[@]}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
report=$(mktemp)
step() { python3 bench/train_step.py --model ViT-B-16 --device cuda --markdown --steps 20 --warmup 5 "$@"; }
{
    echo "## $(date -u +%F): GPU figures on $gpu (torch $(python3 -c 'import torch; print(torch.__version__)'))"
    echo
    echo 'Command: `bash bench/gpu.sh`. Naive = the reference style (fp16 cast, everything recomputed), timed in the same process.'
    echo 'Floor = the FLOPs of one step (torch FlopCounterMode) at 790 TFLOP/s bf16.'
    echo
    echo "| method | model | device | batch | classes | mode | naive ms | ours ms | speed-up | FLOP floor ms | ours / floor | first step |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    step --booster specpl                    # default settings: compile="auto" decides for a 2,500-step run
    step --booster specpl --compile off      # eager
    step --compile off
    step --compile on
    step --host maple --booster specpl --batch 4 --compile on
    bash bench/deep_hosts.sh ViT-B-16 cuda --steps 10 --warmup 3 --compile off | tail -n +3
    for boosters in caspl dapt isp "caspl --booster specpl"; do  # the other boosters on MaPLe (bench/boosters.sh)
        step --host maple --booster $boosters --batch 4 --steps 10 --warmup 3 --compile off
    done
    echo
    python3 bench/cache_fill.py --device cuda --model ViT-B-16 --images 4096 --workers 12
    echo
} | tee "$report"
cat "$report" >> bench/RESULTS.md
if [[ -n "${OUT:-}" ]]; then cp "$report" "$OUT/gpu-results.md"; fi
