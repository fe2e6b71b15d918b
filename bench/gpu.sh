#!/usr/bin/env bash
# Every GPU figure of the performance work in one command, each against its naive reference step
# in the same process, on an H100 or H200 with no network; appends a dated table to
# bench/RESULTS.md (and writes it to $OUT/gpu-results.md when $OUT is set), with the wall time it took.
#
#   bash bench/gpu.sh --fetch-wheels   # here, with a package index: the wheels the GPU image lacks, into .whl/
#   bash bench/gpu.sh                  # there (carry .whl/): installs them offline, then measures
#   bash bench/gpu.sh --check          # anywhere: every command once on the CPU with the tiny model, nothing written
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(open_clip_torch==3.3.0 ftfy wcwidth diffusers==0.42.1)
mode=${1:-measure}
if [[ "$mode" == "--fetch-wheels" ]]; then
    pip download --no-deps --dest .whl "${WHEELS[@]}"
    exit 0
fi
if [[ "$mode" == "--check" ]]; then
    model=specpl-tiny device=cpu compile_on=off long=(--steps 1 --warmup 0) short=(--steps 1 --warmup 0)
    fill=(--images 32 --batch 16 --workers 0 --decomposers fft)
    gpu="CPU check (specpl-tiny, one step each; not a measurement)"
else
    python3 -c "import open_clip, diffusers" 2>/dev/null || pip install --quiet --no-index --no-deps --find-links .whl "${WHEELS[@]}"
    model=ViT-B-16 device=cuda compile_on=on long=(--steps 20 --warmup 5) short=(--steps 10 --warmup 3)
    fill=(--images 4096 --workers 12)
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
report=$(mktemp)
started=$SECONDS
step() { python3 bench/train_step.py --model "$model" --device "$device" --markdown "$@"; }
{
    echo "## $(date -u +%F): GPU figures on $gpu (torch $(python3 -c 'import torch; print(torch.__version__)'))"
    echo
    echo 'Command: `bash bench/gpu.sh`. Naive = the reference style (fp16 cast, everything recomputed), timed in the same process.'
    echo 'Floor = the FLOPs of one step (torch FlopCounterMode) at 790 TFLOP/s bf16.'
    echo
    echo "| method | model | device | batch | classes | mode | naive ms | ours ms | speed-up | FLOP floor ms | ours / floor | first step |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    step --booster specpl "${long[@]}"                   # default settings: compile="auto" decides for a 2,500-step run
    step --booster specpl --compile off "${long[@]}"     # eager
    step --compile off "${long[@]}"
    step --compile "$compile_on" "${long[@]}"
    step --host maple --booster specpl --batch 4 --compile "$compile_on" "${long[@]}"
    bash bench/deep_hosts.sh "$model" "$device" "${short[@]}" --compile off | tail -n +3
    for boosters in caspl dapt isp "caspl --booster specpl"; do  # the other boosters on MaPLe (bench/boosters.sh)
        step --host maple --booster $boosters --batch 4 "${short[@]}" --compile off
    done
    echo
    python3 bench/cache_fill.py --device "$device" --model "$model" "${fill[@]}"
    echo
    echo "Wall time of \`bash bench/gpu.sh\`: $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s."
    echo
} | tee "$report"
if [[ "$mode" == "--check" ]]; then exit 0; fi
cat "$report" >> bench/RESULTS.md
if [[ -n "${OUT:-}" ]]; then cp "$report" "$OUT/gpu-results.md"; fi
