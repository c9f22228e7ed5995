#!/usr/bin/env bash
# Trains the ensemble members side by side on one GPU from a pixel pack.
#
#   configs/train_ensemble_gpu.sh PACK OUT_DIR EPOCHS [MEMBERS]
#
# PACK comes from `python train_hf.py configs/ensemble_member.json --write_pixel_pack PACK`
# on a machine that has the images. Member i runs
#
#   python train_hf.py configs/ensemble_member.json --pixel_pack PACK --bf16 true \
#       --num_train_epochs EPOCHS --seed i --output_dir OUT_DIR/member-i
#
# A 3.4 M-parameter model leaves a GPU mostly idle between kernel launches, so members
# in parallel cost little more than one: on an H200, 4 members took 2.24 s an epoch
# together (150 epochs in 336 s). On CPUs, run the same command per member without
# --bf16 (about 45 s an epoch on two cores). Then combine them:
#
#   tumor-classifier ensemble OUT_DIR/member-* --out ENSEMBLE_DIR --data DATA_DIR
set -uo pipefail
pack=$1 out=$2 epochs=$3 members=${4:-4}
started=$(date +%s)
mkdir -p "$out"
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
pids=()
for ((i = 0; i < members; i++)); do
    python3 train_hf.py configs/ensemble_member.json --pixel_pack "$pack" --bf16 true --pixel_cache_dir "" \
        --num_train_epochs "$epochs" --seed "$i" --output_dir "$out/member-$i" > "$out/member-$i.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "[$(( $(date +%s) - started ))s] $members members x $epochs epochs done (exit status $status)"
for ((i = 0; i < members; i++)); do
    tail -1 "$out/member-$i.log"
done
exit $status
