#!/usr/bin/env bash
# The GPU checks CI cannot run (it has no GPU): on a machine with an NVIDIA GPU, with onnxruntime-gpu and
# edgekit importable by $PYTHON (default python3). Writes OUTDIR/{probe.json, run.log, pytest.log, results.tar.gz}.
#
#   bash benchmarks/gpu/run.sh OUTDIR [OUTPUT_FOLDER ...]
#
# 1. probe.py: does a CUDA session come up, with and without edgekit's library loading;
# 2. with no OUTPUT_FOLDER: compress zoo:digits-cnn for nvidia-gpu (INT8, then FP16), so the speed gate
#    times on the GPU (about 4 minutes on 16 cores); given folders of earlier compress runs are used as they are;
# 3. quantize a wide MLP to FP16 for nvidia-gpu (where FP16 should pay);
# 4. profile the folders on nvidia-gpu and this host's CPU, interleaved, with --json (stdout must be JSON);
# 5. the test files whose assertions take another branch when a GPU is present.
set -uo pipefail
out=${1:?usage: run.sh OUTDIR [OUTPUT_FOLDER ...]}
shift
py=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d)
exec > >(tee "$out/run.log") 2>&1
step() { echo; echo "== $(date +%T) $*"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('onnxruntime', o.__version__, o.get_available_providers())"
nproc

step probe
timeout 300 $py benchmarks/gpu/probe.py > "$out/probe.json"; echo "rc=$?"
cat "$out/probe.json"

step "targets setup nvidia-gpu --json"
$py -m edgekit targets setup nvidia-gpu --json; echo "rc=$?"

folders=("$@")
if [ ${#folders[@]} -eq 0 ]; then
  for mode in int8 fp16; do
    step "compress zoo:digits-cnn --quantize $mode --target nvidia-gpu --target x86-laptop"
    timeout 300 $py -m edgekit compress zoo:digits-cnn --quantize "$mode" --target nvidia-gpu --target x86-laptop \
      -o "$work/$mode" --json > "$work/$mode.stdout.json" 2> "$work/$mode.stderr"
    echo "rc=$?"
    tail -5 "$work/$mode.stderr"
    # --json output must be one JSON object: anything onnxruntime prints on stdout would break it
    $py -c "import json,sys; d=json.load(open(sys.argv[1])); print('stdout is JSON; recommended:', d.get('recommended'))" \
      "$work/$mode.stdout.json" || head -c 600 "$work/$mode.stdout.json"
    sed -n '/^## Recommended/,/^## Latency/p' "$work/$mode/report.md" 2>/dev/null | head -40
    folders+=("$work/$mode")
  done
fi

step "quantize --mode fp16 a wide MLP (4 x 2048x2048, batch 64) for nvidia-gpu"
$py benchmarks/gpu/wide_mlp.py "$work/wide" && \
timeout 240 $py -m edgekit quantize "$work/wide/mlp.onnx" --mode fp16 --calib "$work/wide/calib.npy" \
  --target nvidia-gpu -o "$work/wide-fp16" --json > "$work/wide.stdout.json" 2> "$work/wide.stderr"
echo "rc=$?"
tail -3 "$work/wide.stderr"
$py -c "import json,sys; d=json.load(open(sys.argv[1])); print('stdout is JSON; recommended:', d.get('recommended'))" \
  "$work/wide.stdout.json" || head -c 600 "$work/wide.stdout.json"
folders+=("$work/wide-fp16")

step "profile ${folders[*]} on nvidia-gpu and x86-laptop"
timeout 300 $py -m edgekit profile "${folders[@]}" --target nvidia-gpu --target x86-laptop \
  -o "$work/profile.json" --json > "$work/profile.stdout.json" 2> "$work/profile.stderr"
echo "rc=$?"
echo "stderr lines: $(wc -l < "$work/profile.stderr")"; head -5 "$work/profile.stderr"
$py -c "import json,sys; d=json.load(open(sys.argv[1])); print('stdout is JSON;', len(d['runs']), 'runs')" \
  "$work/profile.stdout.json" || head -c 600 "$work/profile.stdout.json"
head -60 "$work/profile.md" 2>/dev/null

step "tests with a GPU branch"
timeout 400 $py -m pytest -q -rfE -p no:cacheprovider -n 8 --dist loadfile \
  tests/test_runner_gpu.py tests/test_gpu_simulation.py tests/test_profile.py tests/test_profile_cli.py \
  tests/test_profile_runner.py tests/test_quant_bias.py tests/test_quant_foreign_onnx.py tests/test_targets.py \
  tests/test_report_conditions.py tests/test_speed_gate_profile.py > "$out/pytest.log" 2>&1
echo "rc=$?"
tail -25 "$out/pytest.log"

step pack
tar -C "$work" -czf "$out/results.tar.gz" --exclude='*.onnx' --exclude='*.npz' . && ls -la "$out"
