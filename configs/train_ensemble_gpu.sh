#!/usr/bin/env bash
# Trains the ensemble members side by side on one GPU from a pixel pack, with as many
# epochs as fit the time the machine is lent for.
#
#   configs/train_ensemble_gpu.sh PACK OUT_DIR BUDGET_SECONDS [MEMBERS] [MAX_EPOCHS]
#
# PACK comes from `python train_hf.py configs/ensemble_member.json --write_pixel_pack PACK`
# on a machine that has the images. Every member runs train_hf.py with
# configs/ensemble_member.json, its own seed, bf16 and the pack; a small model leaves a
# GPU mostly idle between kernel launches, so members in parallel cost little more
# than one. A two-epoch probe of all members first measures the epoch time; the epoch
# count is then the most that fits BUDGET_SECONDS (capped at MAX_EPOCHS). On CPUs,
# run the same train_hf.py command per member, without --bf16.
set -uo pipefail
pack=$1 out=$2 budget=$3 members=${4:-4} max_epochs=${5:-200}
config=configs/ensemble_member.json
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
mkdir -p "$out"
common=(--pixel_pack "$pack" --bf16 "${BF16:-true}" --pixel_cache_dir "" --disable_tqdm true)
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

run_members() {  # epochs, output prefix, time limit, extra flags...
    local epochs=$1 prefix=$2 limit=$3; shift 3
    local pids=()
    for ((i = 0; i < members; i++)); do
        timeout --signal=TERM "$limit" python3 train_hf.py "$config" "${common[@]}" "$@" \
            --num_train_epochs "$epochs" --seed "$i" --output_dir "$prefix-$i" > "$prefix-$i.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}

echo "[$(elapsed)s] probe: $members members x 2 epochs"
probe_start=$(date +%s)
run_members 2 /tmp/probe 300 --calibrate false --save_strategy no
probe_wall=$(( $(date +%s) - probe_start ))
epoch_s=$(python3 - "$members" <<'EOF'
import json, sys
times = [json.load(open(f"/tmp/probe-{i}/metrics.json"))["training"]["train_runtime_s"] / 2 for i in range(int(sys.argv[1]))]
print(max(times))
EOF
) || { echo "probe failed:"; tail -30 /tmp/probe-0.log; exit 1; }
overhead=$(python3 -c "print(max(0.0, $probe_wall - 2 * $epoch_s))")
left=$(( budget - $(elapsed) ))
epochs=$(python3 -c "print(max(1, min($max_epochs, int(0.9 * ($left - $overhead - 30) / $epoch_s))))")
echo "[$(elapsed)s] probe: ${epoch_s}s an epoch with $members in parallel, ${overhead}s start and finish; ${left}s left -> $epochs epochs"

run_members "$epochs" "$out/member" $(( left - 15 ))
echo "[$(elapsed)s] members done"
for ((i = 0; i < members; i++)); do
    dir=$out/member-$i
    if [ ! -f "$dir/metrics.json" ]; then  # cut off: keep its last checkpoint, marked as such
        last=$(ls -d "$dir"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
        echo "member $i did not finish; last checkpoint: ${last:-none}"
        [ -n "$last" ] && cp "$last"/config.json "$last"/model.safetensors "$dir"/ && touch "$dir/INCOMPLETE"
    fi
    python3 - "$dir" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1]) / "metrics.json"
if path.exists():
    m = json.loads(path.read_text())
    t = m["training"]
    print(f"{path.parent.name}: {t['epochs_run']:.0f} epochs in {t['train_runtime_s']:.0f}s, validation accuracy {m['validation']['accuracy']:.4f}, "
          f"test {m.get('test', {}).get('accuracy', float('nan')):.4f}, test without near duplicates {m.get('test_without_near_duplicates', {}).get('accuracy', float('nan')):.4f}")
EOF
done
echo "[$(elapsed)s] done"
