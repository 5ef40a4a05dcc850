#!/usr/bin/env bash
# The GPU checks of issue 7 in one run on a CUDA machine with no network (the project's device check):
#   1. benchmarks/gpu_step.py: bf16 GRPO steps of vgym's trainer on a random 2B-sized Qwen2-VL (HF generation):
#      step time and its split, tokens/s, peak GPU memory, first-pass ratios;
#   2. `vgym train` on configs/qwen2vl_2b.yaml, shortened, from that random model saved as a local checkpoint:
#      the GPU recipe path end to end (load in bf16, gradient checkpointing, oracle SFT, eval, GRPO, checkpoint).
# Usage: OUT=folder bash benchmarks/gpu_check.sh. Wheels of packages the machine lacks (gymnasium) go in .whl/.
# SIZE=tiny DEVICE=cpu DTYPE=float32 runs the same steps on a CPU (a dry run of the script's logic).
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-check}
SIZE=${SIZE:-2b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
NEW_TOKENS=${NEW_TOKENS:-128}
PROMPTS=${PROMPTS-1 4}  # prompts per step of each gpu_step run (empty: only build and save the model)
WORK=$(mktemp -d)
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/deps" .whl/*.whl
  export PYTHONPATH="$WORK/deps${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$WORK/site" .
# PYTHONSAFEPATH: import the installed vgym (with its vgym.tools / tasks / trainers mapping), not ./vgym
export PYTHONPATH="$WORK/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
"$PY" benchmarks/gpu_step.py --size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --prompts $PROMPTS \
  --new-tokens "$NEW_TOKENS" --save "$WORK/model" --out "$OUT/gpu_step.json" 2>&1 | grep -v -i "warn"
start=$(date +%s)
"$PY" -m vgym.app.cli train --config configs/qwen2vl_2b.yaml --out "$WORK/run" --set "model=$WORK/model" \
  --set "device=$DEVICE" --set "dtype=$DTYPE" --set sft.steps=4 --set sft_episodes=32 --set sft.warmup_steps=1 \
  --set grpo.steps=2 --set grpo.prompts_per_step=2 --set grpo.max_new_tokens=64 --set grpo.mini_batch_size=8 \
  --set grpo.gradient_accumulation_steps=2 --set grpo.data_offset=0 --set grpo.dynamic_sampling=false --set grpo.mask_truncated_completions=false --set eval_episodes=16 --set max_new_tokens=64 \
  --set "report_to=[csv]" --set save_every=0 2>&1 | grep -v -i "warn" | tail -20
echo "recipe run: $(( $(date +%s) - start )) s"
cp "$WORK/run/results.json" "$OUT/recipe_results.json"
cp "$WORK/run/metrics.csv" "$OUT/recipe_metrics.csv" 2>/dev/null || ls "$WORK/run"
ls -la "$WORK/run"/checkpoint-* | head
rm -rf "$WORK"
