#!/usr/bin/env bash
# The package as users install it: build the wheel, install it (non-editable) into a fresh
# virtual environment, and from a folder outside the repository compose a config and train a tiny
# run. The torch pair is the one tools/env.sh installed into .venv (pinned once, there).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pins=$("$repo/.venv/bin/python" -m pip freeze | grep -E '^(torch|torchvision)==')
"$repo/.venv/bin/python" -m pip wheel -q --no-deps -w "$work/dist" "$repo" > "$work/build.log" 2>&1
python3 -m venv "$work/venv"
# shellcheck disable=SC2086
"$work/venv/bin/python" -m pip install -q $pins "$work"/dist/microdit-*.whl > "$work/install.log" 2>&1 \
  || { tail -n 30 "$work/install.log"; exit 1; }
cd "$work"
"$work/venv/bin/microdit-train" --cfg job experiment=cpu_masking_naive75 > job.yaml
grep -q "mixer_depth: 0" job.yaml
"$work/venv/bin/microdit-train" trainer.run_dir="$work/runs" trainer.name=wheel "data.folders=[$repo/tests/fixtures/latents]" \
  data.prepare=none model.overrides.caption_dim=32 stages.pretrain.images=16 stages.pretrain.warmup_images=0 \
  trainer.batch_size=8 \
  trainer.progress=false trainer.wandb=disabled
test -f "$work/runs/wheel/summary.json"
"$work/venv/bin/python" -c "from microdit.eval.results import load_paper_numbers; assert load_paper_numbers()['table2']"
"$work/venv/bin/python" -c "import sys, yaml; from microdit.pipeline import compose_job
assert compose_job('main').seeds == yaml.safe_load(open(sys.argv[1]))['seeds']" "$repo/conf/job/main.yaml"
if "$work/venv/bin/microdit-train" --cfg job stages.pretrain.mask.ratio=1.5 > bad.txt 2>&1; then
  echo "microdit-train --cfg job accepted mask ratio 1.5"; exit 1
fi
grep -q "ratio must be in" bad.txt
echo "wheel test: installed package composed a config and trained from $work (outside the repository)"
