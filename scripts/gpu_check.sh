#!/usr/bin/env bash
# GPU checks in one go, for a CUDA machine whose python3 has torch and timm (hydra and omegaconf
# too, or a folder of them in $EVA_SITE):
#   bash scripts/gpu_check.sh OUT_DIR [SECONDS_PER_MODEL]
# 1. tests/integration/test_cuda.py (CPU-equal results, no host sync in a step, bf16 autocast, inductor);
# 2. the step-time benchmark (make bench's models and optimizers) on the GPU, one record per model
#    so that a model cut off by its time limit leaves the other's record whole.
# Everything lands in OUT_DIR/gpu-check.tar.gz (logs, records, profiles). Where the copy's .git is
# not the tree's own, give the commit: EVA_GIT_COMMIT=<hash> bash scripts/gpu_check.sh OUT_DIR
set -u
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [SECONDS_PER_MODEL]}
limit=${2:-190}
work=$(mktemp -d)
export PYTHONPATH=.${EVA_SITE:+:$EVA_SITE} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    $py -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
} 2>&1 | tee "$work/env.txt"

timeout 120 $py -m pytest --noconftest -p no:cacheprovider -q -rA tests/integration/test_cuda.py \
    >"$work/test_cuda.log" 2>&1
echo "test_cuda exit $?: $(tail -n 1 "$work/test_cuda.log")"

tag=$($py -c "from harness.machine import device_tag; print(device_tag('cuda'))")
for model in resnet110 vgg19; do
    # phase profiles: Eva, Eva-f and Eva-s on ResNet-110, Eva on VGG-19
    profile=$([ "$model" = resnet110 ] && echo eva,eva_f,eva_s || echo eva)
    timeout "$limit" $py -m scripts.bench --models "$model" --profile-optimizers "$profile" \
        --out "$work" --name "steptime-$tag-$model" >"$work/bench-$model.log" 2>&1
    echo "bench $model exit $?"
    grep -A 16 "^| optimizer" "$work/steptime-$tag-$model.md" 2>/dev/null
done
tar -C "$work" -czf "$out/gpu-check.tar.gz" .
ls -la "$work"
