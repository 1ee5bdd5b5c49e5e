#!/usr/bin/env bash
# The one command of a prepared GPU run (docs/device.md). On the device machine, with the pack carried:
#     device run:  command "bash bench/device/run.sh"   carry [".device"]   timeout_s 600
# A CPU rehearsal of the whole sequence with tiny sizes (a few minutes; tests/test_device_run.py):
#     bash bench/device/run.sh --dry-run            (OUT defaults to a new temp folder; pack built by pack.py --dry-run)
#
# Options: --dry-run | --budget SECONDS (whole run; default 540 on the device, 14400 dry) | --pack DIR (default .device)
#
# Steps, in this order, each under `timeout` within what is left of the budget; after each one
# bench/device/collect.py refreshes OUT/summary.json and OUT/results.tar, so a run stopped anywhere
# still returns what was done (OUT/run.log holds the whole log):
#   setup       install the carried wheels into /tmp/site (pip --no-index --no-deps), unpack the images    cap  60 s
#   doctor      synthface doctor --json                                                                      cap  30 s
#   smoke       bench/device/smoke.py: imports, bitwise-repeatable renders (fp32, bf16), CPU vs GPU, SFace, MTCNN  cap 60 s
#   throughput  bench/device/throughput.py: train steps/s, generate images/s fp32|bf16 x batch 64|128, plain loop  cap 50 s
#   prepare     synthface train --prepare-only: SFace embeddings + TAEF2 latents of the LFW train half, cached     cap 150 s
#   head        synthface train-head: the identity head the recipe's identity term reads (4,000 steps)         cap 60 s
#   train       synthface train, recipes/native-gpu-latent.yaml; max_steps from the measured step rate, max_minutes
#               from the time left (all of it but the parts + identity + collect reserve: about 3 minutes)
#   parts       bench/device/parts.py split: the trained model -> OUT/model (card.json + <= 4 bf16 parts of <= 16 MiB)  cap 30 s
#   identity    bench/identity.py on the model rebuilt from OUT/model (SFace judge; dlib runs later on the CPU)  cap 110 s
# The scaled LFW protocol (generate + two recognizers) does not fit and is not run.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2

DRY=0
BUDGET=""
PACK=""
# shellcheck source=bench/device/args.sh
source bench/device/args.sh
device_args run.sh 2,21p "$@"

T0=$(date +%s)
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/synthface-device-out.XXXXXX"); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT

if [ "$DRY" = 1 ]; then
  WORK=${DEVICE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/synthface-device-dry.XXXXXX")}
  PY=${PYTHON:-python}
  BUDGET=${BUDGET:-14400}
  CAP_SCALE=100           # about 2 minutes on a free CPU, an hour at nice 19 beside a training job: limits only catch a hang
  PACK=${PACK:-$WORK/pack}
  DEVICE=cpu
  SITE=""
  TRAIN_OVERHEAD=60       # seconds of the train step spent outside its loop (imports, caches, checkpoint, export)
  IDENTITY_RESERVE=120    # the identity step's limit (x CAP_SCALE), kept free when the training time is planned
else
  WORK=${DEVICE_WORK:-/tmp/synthface-device}
  PY=${PYTHON:-python3}
  BUDGET=${BUDGET:-540}
  CAP_SCALE=1
  PACK=${PACK:-.device}
  DEVICE=cuda
  SITE=/tmp/site
  TRAIN_OVERHEAD=45       # imports, cache loading, final checkpoint, export, last sample grid
  IDENTITY_RESERVE=110
fi
FINAL_RESERVE=10          # the last collect
RES=$WORK/results
DATA=$WORK/data
RUN=$WORK/run
rm -rf "$RES" "$DATA" "$RUN" "$WORK/restored"   # a second try on the same machine starts clean (the pack stays)
mkdir -p "$RES"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export SYNTHFACE_SFACE_ONNX="$PACK/models/sface/face_recognition_sface_2021dec_int8bq.onnx"
export PYTHONPATH="${SITE:+$SITE:}$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 0 ]; then
  export XDG_CACHE_HOME=$WORK/cache               # the repaired SFace graph (a bare machine's home may be read-only)
  OMP_NUM_THREADS=$(nproc)                         # onnxruntime (SFace) honours it: all 16 cores, whatever the image sets
  export OMP_NUM_THREADS
fi

# the tiny sizes of the CPU rehearsal (recipe overrides shared by throughput and train)
TINY=(--set model.image_size=64 --set "model.block_out_channels=[16,32]" --set model.layers_per_block=1
      --set model.norm_num_groups=8 --set train.batch_size=8 --set train.device=cpu --set "train.mixed_precision='no'"
      --set train.threads=1)

step() {  # step NAME CAP_SECONDS COMMAND...: run under timeout within the budget, record, collect
  local name=$1 cap=$(( $2 * CAP_SCALE ))
  shift 2
  local now left limit start rc elapsed
  now=$(date +%s)
  left=$(( BUDGET - (now - T0) - FINAL_RESERVE ))
  limit=$(( cap < left ? cap : left ))
  start=$now
  if [ "$limit" -lt 5 ]; then
    rc=skipped
    echo "== $name: skipped, $left s left of the budget"
  else
    echo "== $name (at $(( now - T0 )) s, limit $limit s): $*"
    timeout -k 5 "$limit" "$@"
    rc=$?
    [ "$rc" = 124 ] && echo "== $name: stopped by its $limit s limit"
  fi
  elapsed=$(( $(date +%s) - start ))
  printf '{"step": "%s", "rc": "%s", "seconds": %d, "limit": %d, "at": %d}\n' "$name" "$rc" "$elapsed" "$limit" \
    "$(( start - T0 ))" >> "$RES/steps.jsonl"
  echo "== $name: rc=$rc in $elapsed s"
  "$PY" bench/device/collect.py --work "$WORK" --out "$OUT" || echo "== collect failed (rc=$?)"
  [ "$rc" = 0 ]
}

setup() {  # install the carried wheels, unpack the images
  if [ ! -f "$PACK/manifest.json" ]; then
    echo "no pack at $PACK: build it first with python bench/device/pack.py (docs/device.md)"
    return 1
  fi
  if [ -n "$SITE" ]; then
    local wheels=("$PACK"/wheels/*.whl)
    if [ -e "${wheels[0]}" ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || return 1
    fi
  fi
  "$PY" bench/device/unpack.py "$PACK" "$DATA" --json "$RES/unpack.json" || return 1
  "$PY" -c "import synthface.config, synthface.generator.native, synthface.generator.training; print('synthface imports ok')"
}

main() {
  echo "== synthface device run: $([ "$DRY" = 1 ] && echo dry run on the CPU || echo GPU run), budget $BUDGET s"
  echo "   OUT=$OUT WORK=$WORK PACK=$PACK"
  printf '{"dry_run": %s, "budget_seconds": %d, "started": "%s", "host": "%s", "pack": "%s"}\n' \
    "$([ "$DRY" = 1 ] && echo true || echo false)" "$BUDGET" "$(date -Iseconds)" "$(hostname)" "$PACK" > "$RES/meta.json"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    > "$RES/nvidia-smi.txt" 2>&1

  if [ "$DRY" = 1 ] && [ ! -f "$PACK/manifest.json" ]; then
    step pack 300 "$PY" bench/device/pack.py --dry-run --out "$PACK" || return 1
  fi
  export PACK SITE PY DATA RES
  step setup 60 bash -c "$(declare -f setup); setup" || {
    echo "== setup failed: stopping early (the rest needs it)"; return 1; }

  step doctor 30 "$PY" -m synthface doctor --json "$RES/doctor.json"
  step smoke 60 "$PY" bench/device/smoke.py --device "$DEVICE" --aligned "$DATA/test" --json "$RES/smoke.json"

  local thr=(--vae "$PACK/models/taef2" --device "$DEVICE" --json "$RES/throughput.json")
  if [ "$DRY" = 1 ]; then
    thr+=("${TINY[@]}" --batches 4 --dtypes fp32 --steps 2 --train-seconds 1 --seconds 600)  # bf16 on a CPU: minutes
  else
    thr+=(--batches 64,128 --steps 25 --train-seconds 5 --seconds 35)
  fi
  step throughput 50 "$PY" bench/device/throughput.py "${thr[@]}"

  # training data first (SFace embeddings + TAEF2 latents, cached in the run folder), so the training
  # loop can then be given exactly the time that is left
  local tr=(--data "$DATA/train" --recipe recipes/native-gpu-latent.yaml --set "model.vae=$PACK/models/taef2"
            --set data.people=bench/data/lfw_split.json:train --out "$RUN")
  if [ "$DRY" = 1 ]; then
    tr+=("${TINY[@]}" --set train.warmup_steps=1 --set train.sample_every=2 --set train.sample_identities=2
         --set train.sample_seeds=2 --set train.sample_steps=2 --set train.log_every=1 --set data.workers=1 --set data.batch_size=16)
  fi
  step prepare 150 "$PY" -m synthface train "${tr[@]}" --prepare-only --json "$RES/prepare.json" ||
    TRAIN_OVERHEAD=$(( TRAIN_OVERHEAD + 150 ))   # the train step will finish the caches itself: keep its loop shorter
  # the recipe's identity term reads the noise-aware identity head: distil it from the same caches first
  local head_steps=4000
  [ "$DRY" = 1 ] && head_steps=4
  step head 60 "$PY" -m synthface train-head "${tr[@]}" --set "train.identity_head.steps=$head_steps" --json "$RES/head.json"

  # training: the loop gets what is left but the identity reserve; max_steps from the measured step rate
  local now left cap loop minutes steps
  now=$(date +%s)
  left=$(( BUDGET - (now - T0) - FINAL_RESERVE ))
  cap=$(( left - IDENTITY_RESERVE - 30 ))             # what is left but the parts + identity reserve
  [ "$DRY" = 1 ] && cap=$(( 300 * CAP_SCALE ))       # the rehearsal: 4 steps, a limit that only catches a hang
  loop=$(( cap - TRAIN_OVERHEAD ))
  [ "$loop" -lt 30 ] && loop=30
  minutes=$("$PY" -c "print(round($loop / 60, 2))")
  steps=$("$PY" - "$RES/throughput.json" "$loop" "$DRY" <<'EOF'
import json, sys
path, loop, dry = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if dry:
    print(4)
    raise SystemExit
try:
    rate = float(json.load(open(path))["train"]["steps_per_s"])
    print(max(500, min(50000, int(rate * loop * 0.85))))
except Exception:
    print(8000)  # the recipe's own
EOF
)
  echo "== train plan: $steps steps, loop <= $minutes min, step limit $cap s"
  step train $(( cap / CAP_SCALE )) "$PY" -m synthface train "${tr[@]}" --set "train.max_minutes=$minutes" --set "train.max_steps=$steps" \
    --json "$RES/train.json"

  if [ -d "$RUN/model" ]; then
    step parts 30 "$PY" bench/device/parts.py split "$RUN/model" "$OUT/model" --max-parts 4 \
      --card-extra "$RUN/train.json" --card-extra "$RUN/config.yaml" --card-extra "$RUN/loss.csv" \
      --external gallery.parquet=results.tar    # the gallery travels once: results.tar train/cache/faces-*.parquet
    local id=(--model "$WORK/restored" --aligned "$DATA/test" --gallery "$RUN/cache/faces-*.parquet"
              --train-json "$RUN/train.json" --train-threads 1 --judges sface --device "$DEVICE"
              --out "$RES/identity.json" --sheet "$RES/identity_contact_sheet.png")
    if [ "$DRY" = 1 ]; then
      id+=(--people 3 --per-person 2 --new-identities 3 --steps 2 --batch-size 8)
    else
      id+=(--people 50 --per-person 8 --new-identities 100 --steps 25 --batch-size 128)
    fi
    step identity "$IDENTITY_RESERVE" bash -c '"$0" bench/device/parts.py restore "$1" "$2" && shift 2 && exec "$0" bench/identity.py "$@"' \
      "$PY" "$OUT/model" "$WORK/restored" "${id[@]}"
  else
    echo "== no trained model in $RUN/model: parts and identity skipped"
  fi

  local failed
  failed=$("$PY" -c "
import json
rows = [json.loads(l) for l in open('$RES/steps.jsonl')]
print(' '.join(r['step'] for r in rows if r['rc'] != '0'))")
  echo "== done in $(( $(date +%s) - T0 )) s; returned: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
  if [ -n "$failed" ]; then
    echo "== steps not ok: $failed"
    return 1
  fi
  echo "== all steps ok"
}

main 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
