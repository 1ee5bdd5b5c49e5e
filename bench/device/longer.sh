#!/usr/bin/env bash
# A second, longer training on a device machine where bench/device/run.sh has just run (docs/device.md):
#     device run:  command "bash bench/device/longer.sh SECONDS"   carry [".device"]   timeout_s SECONDS+30
# run.sh spends most of its budget measuring (smoke, throughput) and leaves the training loop ~1.5 min;
# this one reuses run.sh's unpacked images and caches when the machine is still warm (rebuilds them when
# not), gives training everything but a fixed reserve, and brings back the model (4 bf16 parts), the SFace
# identity figures and the training log. The training gallery is the one run.sh returned in results.tar
# (same images, same embedder). OUT: model/ (card + parts), identity.json, identity_contact_sheet.png, train.tar.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); cd "$ROOT" || exit 2
BUDGET=${1:-450}
T0=$(date +%s)
W=/tmp/synthface-device; PACK=.device; PY=python3; R=$W/long
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export XDG_CACHE_HOME=$W/cache OMP_NUM_THREADS=$(nproc)
export SYNTHFACE_SFACE_ONNX=$ROOT/$PACK/models/sface/face_recognition_sface_2021dec_int8bq.onnx
el() { echo $(( $(date +%s) - T0 )); }
if [ ! -d /tmp/site/diffusers ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PACK"/wheels/*.whl || exit 1
fi
[ -d "$W/data/train" ] || "$PY" bench/device/unpack.py "$PACK" "$W/data" --json /dev/null || exit 1
rm -rf "$R"; mkdir -p "$R"
[ -d "$W/run/cache" ] && cp -r "$W/run/cache" "$R/cache" && echo "== reusing run.sh's caches"
TR=(--data "$W/data/train" --recipe recipes/native-gpu-latent.yaml --set "model.vae=$PACK/models/taef2"
    --set data.people=bench/data/lfw_split.json:train --out "$R")
"$PY" -m synthface train "${TR[@]}" --prepare-only || exit 1
"$PY" -m synthface train-head "${TR[@]}" --set train.identity_head.steps=4000 || exit 1   # the identity loss's guide
LOOP=$(( BUDGET - $(el) - 45 - 75 ))      # train overhead 45 s; parts + identity + copy 75 s
STEPS=$(( LOOP * 9 ))                     # 9.3-10.3 steps/s measured at batch 256 bf16 after warm-up
MIN=$("$PY" -c "print(round($LOOP / 60, 2))")
echo "== at $(el) s: train $STEPS steps, loop <= $MIN min"
"$PY" -m synthface train "${TR[@]}" --set "train.max_minutes=$MIN" --set "train.max_steps=$STEPS" \
  --set train.sample_every=100000 --json "$R/train-summary.json" || exit 1
echo "== trained at $(el) s"
"$PY" bench/device/parts.py split "$R/model" "$OUT/model" --max-parts 4 --card-extra "$R/train.json" \
  --card-extra "$R/config.yaml" --card-extra "$R/loss.csv" --external gallery.parquet=results.tar || exit 1
tar cf "$OUT/train.tar" -C "$R" train.json config.yaml loss.csv train-summary.json
"$PY" bench/device/parts.py restore "$OUT/model" "$W/restored-long" --search "$R/model" && timeout $(( BUDGET - $(el) )) \
  "$PY" bench/identity.py --model "$W/restored-long" --aligned "$W/data/test" --gallery "$R/cache/faces-*.parquet" \
  --train-json "$R/train.json" --train-threads 1 --judges sface --device cuda --out "$OUT/identity.json" \
  --sheet "$OUT/identity_contact_sheet.png" --people 50 --per-person 8 --new-identities 100 --steps 25 --batch-size 128
echo "== done at $(el) s"
