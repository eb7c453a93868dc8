#!/usr/bin/env bash
# The first checks of a GPU machine, in one go (about 5 minutes on one H100), with microdit
# installed (pip install . or the wheel) and this checkout as the working directory:
#   1. tests/cuda: every CUDA path keeps one device and gives the CPU's answer;
#   2. microdit-bench --quick --device cuda (MicroDiT_Tiny_2 / MicroDiT_XL_2 steps, the GPU plan's
#      roofline beside each measured step, attention, MoE, reader, sampler);
#   3. microdit-train on CUDA (nano on a latent dataset folder, bf16), eager then compiled, and
#      microdit-sample from the eager run.
# Usage: bash tools/gpu_check.sh LATENT_DATASET_FOLDER OUT_FOLDER
set -u
data=$(realpath "${1:?usage: bash tools/gpu_check.sh LATENT_DATASET_FOLDER OUT_FOLDER}")
out=$(realpath -m "${2:?usage: bash tools/gpu_check.sh LATENT_DATASET_FOLDER OUT_FOLDER}")
mkdir -p "$out/runs"
python3 -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tail -8
microdit-bench --quick --device cuda --out "$out/bench" > "$out/bench.log" 2>&1; echo "microdit-bench rc=$?"
tail -c 2000 "$out/bench.log"
common=(data.folders="[$data]" trainer.run_dir="$out/runs" trainer.wandb=disabled trainer.progress=false
        trainer.batch_size=256 stages.pretrain.images=25600)
for mode in eager compiled; do
  extra=(); [ "$mode" = compiled ] && extra=(trainer.compile=true)
  microdit-train "${common[@]}" trainer.name=$mode "${extra[@]}" > "$out/train-$mode.log" 2>&1
  echo "microdit-train ($mode) rc=$?"; tail -3 "$out/train-$mode.log"
done
microdit-sample "$out/runs/eager" --prompt "a red circle on the left" --prompt "two blue squares" \
  --out "$out/samples" 2>&1 | tail -2
