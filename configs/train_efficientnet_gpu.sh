#!/usr/bin/env bash
# Fine-tunes the EfficientNet-Lite0 at 160 px on one GPU from a pixel pack: four runs side
# by side (learning rate 5e-4 and 1e-3, seeds 0 and 1), so validation can choose.
#
#   configs/train_efficientnet_gpu.sh PACK OUT_DIR EPOCHS MINUTES [EXTRA TRAIN_HF FLAGS...]
#
# PACK comes from, on a machine that has the images:
#
#   python train_hf.py configs/gpu_efficientnet_160.json --write_pixel_pack PACK --pixel_pack_jpeg_quality 90
#
# (the test split may be dropped from it to fit the 64 MiB that travel to a lent GPU:
# Testing is never used for a choice, and is evaluated from the original files after).
# Each run starts from the shipped model (`checkpoint` in the config) and stops after
# MINUTES of training even if EPOCHS are not done (`--max_train_minutes`), then calibrates
# on validation and writes its folder OUT_DIR/<name>. On CPUs, run one of the commands
# below without --bf16.
set -uo pipefail
pack=$1 out=$2 epochs=$3 minutes=$4
shift 4  # the rest goes to every run, e.g. --bf16 false --max_train_samples 64 for a dry run on CPUs
started=$(date +%s)
mkdir -p "$out"
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
declare -A runs=([lr5e-4-seed0]="0.0005 0" [lr5e-4-seed1]="0.0005 1" [lr1e-3-seed0]="0.001 0" [lr1e-3-seed1]="0.001 1")
pids=()
for name in "${!runs[@]}"; do
    read -r lr seed <<< "${runs[$name]}"
    python3 train_hf.py configs/gpu_efficientnet_160.json --pixel_pack "$pack" --pixel_cache_dir "" --bf16 true \
        --num_train_epochs "$epochs" --max_train_minutes "$minutes" --learning_rate "$lr" --seed "$seed" \
        --output_dir "$out/$name" "$@" > "$out/$name.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "[$(( $(date +%s) - started ))s] ${#runs[@]} runs x $epochs epochs (at most $minutes min) done (exit status $status)"
for name in "${!runs[@]}"; do
    echo "== $name"; tail -2 "$out/$name.log"
done
exit $status
