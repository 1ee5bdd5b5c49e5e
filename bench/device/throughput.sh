#!/usr/bin/env bash
# The sampling throughput bench on the device, as its own call (docs/device.md, "throughput"):
#
#   run(command="bash bench/device/throughput.sh", carry=[".device"], timeout_s=330)
#
# bench/throughput.py at GPU sizes: an SD-1.5-size random UNet + VAE (512 px, DDIM 25, CFG 3,
# batch 16, bf16) and the native latent model of recipes/native-gpu-latent.yaml (batch 64): diffusers'
# plain loop, synthface's loop with each fast-path option, synthface end to end (SFace filter on the
# device, Parquet shards) with sampling.overlap on and off. Held to BUDGET seconds (default 300):
# measurements that no longer fit are skipped and say so, the JSON is rewritten after each one.
#
# Options: --dry-run (CPU, toy sizes, the installed environment, no pack needed), --budget SECONDS,
# --pack DIR (default .device). Returns OUT/throughput_gpu.json (throughput_dry.json on a dry run),
# OUT/throughput.log and OUT/nvidia-smi.txt.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2

DRY=0
BUDGET=300
PACK=.device
# shellcheck source=bench/device/args.sh
source bench/device/args.sh
device_args throughput.sh 2,15p "$@"

T0=$(date +%s)
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/synthface-throughput-out.XXXXXX"); fi
mkdir -p "$OUT"
LOG=$OUT/throughput.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python}
  JSON=$OUT/throughput_dry.json
  ARGS=(--device cpu --steps 2 --batch 2 --repeats 1 --batches 1 --e2e-batches 1)
else
  PY=${PYTHON:-python3}
  SITE=/tmp/site
  JSON=$OUT/throughput_gpu.json
  WORK=${DEVICE_WORK:-/tmp/synthface-device}
  export XDG_CACHE_HOME=$WORK/cache                # the repaired SFace graph (a bare machine's home may be read-only)
  export SYNTHFACE_SFACE_ONNX="$PACK/models/sface/face_recognition_sface_2021dec_int8bq.onnx"
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  OMP_NUM_THREADS=$(nproc)
  export OMP_NUM_THREADS
  ARGS=(--device cuda --vae "$PACK/models/taef2")
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    > "$OUT/nvidia-smi.txt" 2>&1
  # the wheels (diffusers, pydantic, onnx2torch, ...): already there when run.sh ran on this machine
  if ! "$PY" -c "import diffusers, pydantic, onnx2torch" 2>/dev/null; then
    wheels=("$PACK"/wheels/*.whl)
    if [ ! -e "${wheels[0]}" ]; then
      echo "no wheels in $PACK/wheels: build the pack first (python bench/device/pack.py, docs/device.md)" | tee "$LOG"
      exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
      2>&1 | tee -a "$LOG" || exit 1
  fi
fi

LEFT=$(( BUDGET - ($(date +%s) - T0) ))
echo "== throughput bench ($([ "$DRY" = 1 ] && echo dry run, CPU || echo GPU)): $LEFT s left of $BUDGET" | tee -a "$LOG"
# the script stops starting measurements 20 s before its limit; the limit itself catches a hang
timeout -k 5 "$(( LEFT - 5 ))" "$PY" bench/throughput.py "${ARGS[@]}" --seconds "$(( LEFT - 25 ))" --json "$JSON" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
echo "== throughput bench: rc=$RC in $(( $(date +%s) - T0 )) s; $JSON" | tee -a "$LOG"
exit "$RC"
