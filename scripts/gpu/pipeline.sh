#!/usr/bin/env bash
# The shapes model's training, end to end, as one prepared run on one GPU (this is how models/shapes was made;
# MODEL_CARD.md names the exact call). Stages, each packed into $OUT as soon as it exists so that a run cut
# short still returns what it finished:
#   1. two VQ tokenizer runs side by side (learning rates 2e-3 and 1e-3), evaluated, the better one kept;
#      meanwhile a short preflight of every later stage on the GPU (pretraining with retrieval, SFT);
#   2. CM3 pretraining with K = 0, 1, 2 retrieved documents side by side (equal wall-clock on one GPU: the
#      retrieval ablation); K = 2 is the model that goes on;
#   3. multi-task instruction tuning (SFT) from the K = 2 model.
# Budgets (minutes) come from the environment: VQ_MIN, PRE_MIN, SFT_MIN. Needs a CUDA GPU.
# VQ=DIR skips stage 1 and uses that tokenizer (e.g. VQ=models/shapes/vq).
set -uo pipefail
OUT=${OUT:-out/gpu}
RUNS=${RUNS:-runs/gpu}
VQ_MIN=${VQ_MIN:-2.3}
PRE_MIN=${PRE_MIN:-2.5}
SFT_MIN=${SFT_MIN:-2.0}
SFT_MIX=${SFT_MIX:-configs/sft_mix.json}
SFT_LR=${SFT_LR:-1e-3}
PRE_BATCH=${PRE_BATCH:-64}
PRE_LR=${PRE_LR:-2e-3}
TRAIN_SCENES=${TRAIN_SCENES:-50000}
WORKERS=${WORKERS:-4}
SFT_WORKERS=${SFT_WORKERS:-10}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the whole script with tiny budgets (VQ_TRAINING=shapes)
VQ_TRAINING=${VQ_TRAINING:-gpu}
mkdir -p "$OUT" "$RUNS"
# tqdm reads its defaults from TQDM_* variables: one progress line per 10 s keeps the logs readable.
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cm3() { python3 -c 'from cm3leon.cli import main; main()' "$@"; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/pipeline.log"; }
tail_of() { echo "--- $1"; tail -c 1500 "$1"; }
snapshot_logs() {  # what comes back even when the call is cut off at its time limit
    tar -czf "$OUT/logs.tar.gz.partial" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.npz' \
        --exclude='*.npy' --exclude='checkpoint' "$RUNS" 2>/dev/null && mv "$OUT/logs.tar.gz.partial" "$OUT/logs.tar.gz"
}
(while sleep 20; do snapshot_logs; done) &
SNAPSHOTTER=$!
finish() {
    kill "$SNAPSHOTTER" 2>/dev/null
    tar -czf "$OUT/logs.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.npz' --exclude='*.npy' \
        --exclude='checkpoint' "$RUNS" 2>/dev/null
    log "done: $(ls "$OUT")"
    exit "${1:-0}"
}

log "start on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c "import torch; assert '$DEVICE' == 'cpu' or torch.cuda.is_available(); print('torch', torch.__version__)" \
    || finish 2

# --- 1. VQ tokenizers, and a preflight of the later stages on the old VQ ---------------------------------
GIVEN_VQ=${VQ:-}
for variant in a:2e-3 b:1e-3; do
    [ -n "$GIVEN_VQ" ] && break
    name=${variant%%:*} lr=${variant#*:}
    cm3 train vq --preset shapes --training "$VQ_TRAINING" --lr "$lr" --minutes "$VQ_MIN" --device "$DEVICE" \
        --out "$RUNS/vq-$name" > "$RUNS/vq-$name.log" 2>&1 &
done
preflight_ok=1 sft_ok=1
cm3 train pretrain --preset shapes --out "$RUNS/preflight" --steps 3 --train-scenes 512 --retrieved 2 \
    --vq models/shapes/vq --tokenizer-dir models/shapes --device "$DEVICE" --data-workers 2 --batch-size 8 \
    > "$RUNS/preflight.log" 2>&1 || preflight_ok=0
if [ "$preflight_ok" = 1 ]; then
    cm3 train sft --init "$RUNS/preflight/final" --out "$RUNS/preflight-sft" --mix "$SFT_MIX" --steps 3 \
        --retrieved 2 --data-workers 2 --device "$DEVICE" --batch-size 8 > "$RUNS/preflight-sft.log" 2>&1 || sft_ok=0
fi
log "preflight ok: pretrain=$preflight_ok sft=$sft_ok"
wait
for name in a b; do
    [ -n "$GIVEN_VQ" ] && break
    tail_of "$RUNS/vq-$name.log"
    cm3 eval vq --checkpoint "$RUNS/vq-$name" --n 1000 --json "$RUNS/vq-$name/eval.json" --threads 6 \
        > "$RUNS/vq-$name-eval.log" 2>&1 &
done
wait
if [ -n "$GIVEN_VQ" ]; then
    VQ=$GIVEN_VQ
    log "using the given VQ $VQ"
else
    VQ_RUN=$(python3 scripts/gpu/pick_vq.py "$RUNS/vq-a" "$RUNS/vq-b") || finish 3
    VQ="$VQ_RUN/final"
    log "chosen VQ: $VQ_RUN $(python3 -c "import json; m=json.load(open('$VQ_RUN/eval.json')); print({k: m[k] for k in ('psnr','oracle_accuracy','codebook_usage')})")"
    python3 scripts/gpu/pack.py "$VQ_RUN" "$OUT/vq.tar" --keep-fp32 | tee -a "$OUT/pipeline.log"
fi
if [ "$preflight_ok" = 0 ]; then
    tail_of "$RUNS/preflight.log"; [ -f "$RUNS/preflight-sft.log" ] && tail_of "$RUNS/preflight-sft.log"
    log "preflight failed: stopping after the VQ stage"; finish 4
fi

# --- 2. pretraining, K = 0 / 1 / 2 retrieved documents side by side ------------------------------------
for k in 0 1 2; do
    cm3 train pretrain --preset shapes --out "$RUNS/pretrain-k$k" --minutes "$PRE_MIN" --retrieved "$k" \
        --vq "$VQ" --tokenizer-dir models/shapes --device "$DEVICE" --batch-size "$PRE_BATCH" --lr "$PRE_LR" \
        --train-scenes "$TRAIN_SCENES" --data-workers "$WORKERS" --checkpoint-minutes 1 \
        > "$RUNS/pretrain-k$k.log" 2>&1 &
done
wait
for k in 0 1 2; do
    tail_of "$RUNS/pretrain-k$k.log"
    python3 scripts/gpu/pack.py "$RUNS/pretrain-k$k" "$OUT/pretrain-k$k.tar" | tee -a "$OUT/pipeline.log"
done
[ -d "$RUNS/pretrain-k2/final" ] || finish 5

# --- 3. instruction tuning from the K = 2 model ---------------------------------------------------------
if [ "$sft_ok" = 1 ]; then
    cm3 train sft --init "$RUNS/pretrain-k2/final" --out "$RUNS/sft" --mix "$SFT_MIX" --minutes "$SFT_MIN" \
        --retrieved 2 --data-workers "$SFT_WORKERS" --device "$DEVICE" --batch-size "$PRE_BATCH" --lr "$SFT_LR" \
        --checkpoint-minutes 1 > "$RUNS/sft.log" 2>&1
    tail_of "$RUNS/sft.log"
    [ -d "$RUNS/sft/final" ] && python3 scripts/gpu/pack.py "$RUNS/sft" "$OUT/sft.tar" | tee -a "$OUT/pipeline.log"
else
    tail_of "$RUNS/preflight-sft.log"; log "SFT preflight failed: no SFT stage"
fi
finish 0
