#!/usr/bin/env bash
# Run the SCALE=cpu reproduction grid (Tables 4/9, Figs. 3/5/8, kl_sweep) side by side on one GPU:
#   bash scripts/gpu_grid.sh OUT_DIR SECONDS [JOBS [REPRODUCE_ARGS...]]
# (e.g. --only '*optimizer=kfac,seed=1' to run just some of the grid's runs)
# for a CUDA machine whose python3 has torch (and hydra/omegaconf, or a folder of them in
# $EVA_SITE). The CIFAR-10 JPEG tarball comes from $EVA_CIFAR10_TARBALL. Every run is the same
# train.py run that `make table4 SCALE=cpu` makes; records say which device ran them. After
# SECONDS (counted from the start of this script) nothing new starts and running runs stop
# (their checkpoints come back, so `make ... SCALE=cpu` resumes them anywhere).
# OUT_DIR receives records.tar.gz (records, metrics, logs; refreshed every 15 s), checkpoints of
# unfinished runs as ckpt.tar.part-* (split at 15 MB), pool.log and env.txt.
set -u
out=${1:?usage: bash scripts/gpu_grid.sh OUT_DIR SECONDS [JOBS]}
budget=${2:?usage: bash scripts/gpu_grid.sh OUT_DIR SECONDS [JOBS]}
jobs=${3:-15}
shift 3 2>/dev/null || shift $#
t0=$(date +%s)
py=${PYTHON:-python3}
export PYTHONPATH=.${EVA_SITE:+:$EVA_SITE} PYTHONUNBUFFERED=1 WANDB_MODE=offline
export EVA_DATA=${EVA_DATA:-/tmp/eva-data} OMP_NUM_THREADS=1
targets="table4 fig5 fig8 fig3 table9 kl_sweep"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $py -c "import sys, torch, hydra; print(sys.version.split()[0], torch.__version__, hydra.__version__)"
    echo "commit ${EVA_GIT_COMMIT:-?} jobs $jobs budget ${budget}s"
} 2>&1 | tee "$out/env.txt"

# Unpack and decode CIFAR-10 once (the runs then read the decoded cache side by side).
mkdir -p "$EVA_DATA"
$py - <<'EOF' 2>&1 | tee -a "$out/env.txt"
import os, time
from data.registry import build_dataset
t = time.time()
splits = build_dataset("cifar10_images", tarball=os.environ["EVA_CIFAR10_TARBALL"])
print(f"cifar10_images: train {tuple(splits.train[0].shape)}, test {tuple(splits.test[0].shape)}, "
      f"{time.time() - t:.0f} s")
EOF

# CUDA MPS lets the runs' small kernels overlap; keep it only if four clients work under it.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>>"$out/env.txt"; then
    ok=1
    for i in 1 2 3 4; do
        timeout 90 $py -c "import torch; x = torch.randn(256, 256, device='cuda'); \
[x.mm(x) for _ in range(200)]; torch.cuda.synchronize(); print('mps client ok')" \
            >>"$out/env.txt" 2>&1 &
    done
    for job in $(jobs -p); do wait "$job" || ok=0; done
    if [ "$ok" = 1 ]; then echo "MPS: on" | tee -a "$out/env.txt"
    else echo quit | nvidia-cuda-mps-control; echo "MPS: failed, off" | tee -a "$out/env.txt"; fi
else
    echo "MPS: not available" | tee -a "$out/env.txt"
fi

# Every 15 s a copy of the records (small) lands in OUT, in case the machine is taken first.
runs=results/runs/cpu/cpu_cifar_full
save_records() {
    tar -czf "$out/.records.tmp" --exclude=checkpoint.pt --exclude=wandb --exclude=.hydra \
        --exclude='.checkpoint.pt.*' "$runs" results/cpu 2>/dev/null && mv "$out/.records.tmp" "$out/records.tar.gz"
}
(while sleep 15; do save_records; done) &
saver=$!

left=$((budget - ($(date +%s) - t0) - 30))
echo "pool time limit ${left}s" | tee -a "$out/env.txt"
$py -m scripts.reproduce $targets --scale cpu --jobs "$jobs" --time-limit "$left" -o logger.wandb=false "$@" \
    2>&1 | tee "$out/pool.log"

# Records of every run; checkpoints only of runs that did not finish (to resume them).
kill "$saver" 2>/dev/null
save_records
unfinished=$($py - <<'EOF'
from pathlib import Path
from harness.records import finished_run
# K-FAC first (Table 4), then the smaller ones, up to 55 MB: OUT returns 64 MB at most
found = [d / "checkpoint.pt" for d in Path("results/runs/cpu/cpu_cifar_full").iterdir()
         if (d / "checkpoint.pt").exists() and finished_run(d) is None]
found.sort(key=lambda p: ("optimizer=kfac" not in str(p), p.stat().st_size))
total = 0
for path in found:
    total += path.stat().st_size
    if total <= 55e6:
        print(path)
EOF
)
if [ -n "$unfinished" ]; then
    tar -cf - $unfinished | split -b 15m - "$out/ckpt.tar.part-"
fi
ls -la "$out"
echo "total $(($(date +%s) - t0)) s"
