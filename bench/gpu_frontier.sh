#!/usr/bin/env bash
# Issue 18's GPU check: one prepared script for a lent GPU machine (never in tests or CI), about 8 minutes.
#
#   bash bench/gpu_frontier.sh FASHION_DIR              # on the device; results under $OUT (else bench/results)
#   SMOKE=1 bash bench/gpu_frontier.sh FASHION_DIR      # the same commands on this CPU at a tiny size
#
# FASHION_DIR holds the real Fashion-MNIST IDX files (carry them to the device: nothing can be fetched there).
# PYTHON and LASER_TOOL name the interpreter and the tool where they are not .venv's
# (e.g. PYTHON=python3 LASER_TOOL='python3 -m laser_tool' with the device's own torch).
#  1. The quick frontier at 18 epochs, 4 runs sharing the GPU (--jobs-per-gpu 4), for at most 5 minutes, in $WORK
#     (default: a new temporary folder). A study resumes, so a rerun with the same WORK continues it; the steps'
#     state is printed either way, and the report and plot, once written, are copied to the results.
#  2. frontier-seed-vit-tiny's baseline model and recipe (the seed-vit-tiny preset) for as many epochs as fit in
#     the rest: bench/train.py --gpu on CIFAR-shaped random images in the real format (CIFAR-10 cannot be fetched
#     there), images/s with and without torch.compile, the torch version recorded in train_gpu.json.
set -euo pipefail
data=${1:?usage: bash bench/gpu_frontier.sh FASHION_DIR}
[ -d "$data" ] || { echo "bench/gpu_frontier.sh: $data is not a folder; give the Fashion-MNIST files' folder" >&2; exit 2; }
out=${OUT:-bench/results}
py=${PYTHON:-.venv/bin/python}
tool=(${LASER_TOOL:-.venv/bin/laser-tool})
study_limit=300  # seconds for part 1
if [ -n "${SMOKE:-}" ]; then  # the same commands, about 3 minutes on a 2-core CPU
  study_flags=(--epochs 1 --train-subset 2000 --val-size 500 --budgets 0.25 --families narrower,svd --heal-epochs 0
               --device cpu --jobs 2)
  train_flags=(--presets seed-vit-tiny --tiny --device cpu --out "$out/train_gpu.json")
else
  study_flags=(--epochs 18 --device cuda --jobs 4 --jobs-per-gpu 4)
  train_flags=(--presets seed-vit-tiny --epochs 10)
fi
work=${WORK:-$(mktemp -d)}  # the study's runs stay there (checkpoints); its report and plot come to $out
study=(--preset quick --data-dir "$data" --out "$work/quick-e18" "${study_flags[@]}")

"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
          torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' | tee "$out/gpu_frontier.log"
start=$(date +%s)
rc=0
timeout "$study_limit" "${tool[@]}" study "${study[@]}" 2>&1 | tail -n 40 | tee -a "$out/gpu_frontier.log" || rc=$?
echo "quick frontier at 18 epochs: exit $rc after $(( $(date +%s) - start )) s (124: the time limit; rerun to continue)" \
  | tee -a "$out/gpu_frontier.log"
"${tool[@]}" study "${study[@]}" --status 2>&1 | tail -n 60 | tee -a "$out/gpu_frontier.log"
for f in report.md plot.png; do
  if [ -f "$work/quick-e18/$f" ]; then cp "$work/quick-e18/$f" "$out/gpu_frontier_quick_e18_$f"; fi
done

"$py" bench/train.py --gpu "${train_flags[@]}" 2>&1 | tail -n 30 | tee -a "$out/gpu_frontier.log"
