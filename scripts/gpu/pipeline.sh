#!/usr/bin/env bash
# The shapes model's training, end to end, as one prepared run on one GPU (this is how models/shapes was made;
# models/shapes/MODEL_CARD.md names the exact call). Stages, each packed into $OUT as soon as it exists so that a run cut
# short still returns what it finished:
#   1. the VQ tokenizer: either two runs from scratch side by side (learning rates 2e-3 and 1e-3), evaluated, the
#      better one kept; or, with VQ=DIR, that tokenizer, and with VQ_FT_MIN also a fine-tune of its pixel decoder
#      alone (`--freeze-codes`: every code stays valid) that runs beside stages 2-3 on the same GPU;
#      VQ_PRESET names the tokenizer preset (default shapes; shapes-local: codes that an edit elsewhere leaves alone);
#      optionally (PREFLIGHT=1) a short preflight of every later stage on the GPU;
#   2. CM3 pretraining with each K of PRE_KS retrieved documents side by side (equal wall-clock on one GPU: the
#      retrieval ablation); the largest K is the model that goes on;
#   3. multi-task instruction tuning (SFT) from that model (or, with SFT_INIT=DIR, from DIR alone: stages 1-2
#      are skipped). SFT_SCENES / SFT_WORDS / SFT_EDITS set the task pools (default: the preset's), SFT_POOL_SEED
#      their seed (another seed: examples an SFT init never saw), SFT_VQA_PER_IMAGE the questions per VQA document,
#      SFT_VQA_WORKED=1 worked VQA answers (description, then "so the answer is X"), SFT_VQA_READ=F the fraction
#      of VQA documents with the image masked out (the answer read from the description).
# Budgets (minutes) come from the environment: VQ_MIN, PRE_MIN, SFT_MIN, VQ_FT_MIN. Needs a CUDA GPU
# (DEVICE=cpu: a dry run of the whole script with tiny budgets). PRECACHE=DIR copies image-code and neighbour
# caches built beforehand on a CPU by scripts/gpu/precache.sh (DIR/pretrain, DIR/sft; the file names carry the
# content keys, so a cache that does not match is simply not used) into the runs, so that GPU time is spent
# training rather than encoding.
set -uo pipefail
OUT=${OUT:-out/gpu}
RUNS=${RUNS:-runs/gpu}
VQ_MIN=${VQ_MIN:-2.3}
VQ_PRESET=${VQ_PRESET:-shapes}
VQ_FT_MIN=${VQ_FT_MIN:-}
VQ_FT_LR=${VQ_FT_LR:-5e-4}
PRE_MIN=${PRE_MIN:-2.5}
PRE_KS=${PRE_KS:-0 1 2}
SFT_MIN=${SFT_MIN:-2.0}
SFT_MIX=${SFT_MIX:-configs/sft_mix.json}
SFT_LR=${SFT_LR:-1e-3}
PRE_BATCH=${PRE_BATCH:-64}
PRE_LR=${PRE_LR:-2e-3}
TRAIN_SCENES=${TRAIN_SCENES:-50000}
WORKERS=${WORKERS:-4}
SFT_WORKERS=${SFT_WORKERS:-10}
PREFLIGHT=${PREFLIGHT:-1}
PRECACHE=${PRECACHE:-}
SFT_INIT=${SFT_INIT:-}
SFT_POOLS=()
[ -n "${SFT_SCENES:-}" ] && SFT_POOLS+=(--scenes "$SFT_SCENES")
[ -n "${SFT_WORDS:-}" ] && SFT_POOLS+=(--words "$SFT_WORDS")
[ -n "${SFT_EDITS:-}" ] && SFT_POOLS+=(--edits "$SFT_EDITS")
[ -n "${SFT_POOL_SEED:-}" ] && SFT_POOLS+=(--pool-seed "$SFT_POOL_SEED")
[ -n "${SFT_VQA_PER_IMAGE:-}" ] && SFT_POOLS+=(--vqa-per-image "$SFT_VQA_PER_IMAGE")
[ -n "${SFT_VQA_WORKED:-}" ] && SFT_POOLS+=(--vqa-worked)
[ -n "${SFT_VQA_READ:-}" ] && SFT_POOLS+=(--vqa-read "$SFT_VQA_READ")
DEVICE=${DEVICE:-cuda}
VQ_TRAINING=${VQ_TRAINING:-gpu}
mkdir -p "$OUT" "$RUNS"
# tqdm reads its defaults from TQDM_* variables: one progress line per 10 s keeps the logs readable.
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cm3() { python3 -c 'from cm3leon.cli import main; main()' "$@"; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/pipeline.log"; }
tail_of() { echo "--- $1"; tail -c 1500 "$1"; }
snapshot_logs() {  # what comes back even when the call is cut off at its time limit
    tar -czf "$OUT/logs.tar.gz.partial" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.npz' \
        --exclude='*.npy' --exclude='checkpoint' --exclude='cache' "$RUNS" 2>/dev/null \
        && mv "$OUT/logs.tar.gz.partial" "$OUT/logs.tar.gz"
}
(while sleep 20; do snapshot_logs; done) &
SNAPSHOTTER=$!
VQ_FT_PID=""
finish() {
    [ -n "$VQ_FT_PID" ] && kill "$VQ_FT_PID" 2>/dev/null
    kill "$SNAPSHOTTER" 2>/dev/null
    snapshot_logs
    log "done: $(ls "$OUT")"
    exit "${1:-0}"
}
# A packed tar over the device tool's 16 MiB per file travels in 15 MiB parts (cat them back together).
split_if_large() {
    if [ "$(stat -c %s "$1")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15m -d "$1" "$1.part-" && rm "$1" && log "split $1 into $(ls "$1".part-* | wc -l) parts"
    fi
}
precache() {  # precache SUBDIR RUN_DIR
    [ -n "$PRECACHE" ] && [ -d "$PRECACHE/$1" ] || return 0
    mkdir -p "$2/cache" && cp "$PRECACHE/$1"/* "$2/cache/" && log "copied caches: $(ls "$2/cache" | tr '\n' ' ')"
}

log "start on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c "import torch; assert '$DEVICE' == 'cpu' or torch.cuda.is_available(); print('torch', torch.__version__)" \
    || finish 2

# --- 1. the VQ tokenizer (and a preflight of the later stages on the shipped VQ) ----------------------------
GIVEN_VQ=${VQ:-}
[ -n "$SFT_INIT" ] && { GIVEN_VQ="$SFT_INIT/vq"; PRE_KS=""; PREFLIGHT=0; }
VQ_PIDS=()
if [ -z "$GIVEN_VQ" ]; then
    for variant in a:2e-3 b:1e-3; do
        name=${variant%%:*} lr=${variant#*:}
        cm3 train vq --preset "$VQ_PRESET" --training "$VQ_TRAINING" --lr "$lr" --minutes "$VQ_MIN" --device "$DEVICE" \
            --out "$RUNS/vq-$name" > "$RUNS/vq-$name.log" 2>&1 &
        VQ_PIDS+=($!)
    done
elif [ -n "$VQ_FT_MIN" ]; then
    cm3 train vq --preset "$VQ_PRESET" --training "$VQ_TRAINING" --init "$GIVEN_VQ" --freeze-codes --lr "$VQ_FT_LR" \
        --minutes "$VQ_FT_MIN" --device "$DEVICE" --out "$RUNS/vq-ft" > "$RUNS/vq-ft.log" 2>&1 &
    VQ_FT_PID=$!
    log "fine-tuning the pixel decoder of $GIVEN_VQ for $VQ_FT_MIN min beside the decoder's training"
fi
preflight_ok=1 sft_ok=1
if [ "$PREFLIGHT" = 1 ]; then
    cm3 train pretrain --preset shapes --out "$RUNS/preflight" --steps 3 --train-scenes 512 --retrieved 2 \
        --vq models/shapes/vq --tokenizer-dir models/shapes --device "$DEVICE" --data-workers 2 --batch-size 8 \
        > "$RUNS/preflight.log" 2>&1 || preflight_ok=0
    if [ "$preflight_ok" = 1 ]; then
        cm3 train sft --init "$RUNS/preflight/final" --out "$RUNS/preflight-sft" --mix "$SFT_MIX" --steps 3 \
            --retrieved 2 --data-workers 2 --device "$DEVICE" --batch-size 8 > "$RUNS/preflight-sft.log" 2>&1 \
            || sft_ok=0
    fi
    log "preflight ok: pretrain=$preflight_ok sft=$sft_ok"
fi
if [ -z "$GIVEN_VQ" ]; then
    for pid in "${VQ_PIDS[@]}"; do wait "$pid"; done
    EVAL_PIDS=()
    for name in a b; do
        tail_of "$RUNS/vq-$name.log"
        cm3 eval vq --checkpoint "$RUNS/vq-$name" --n 1000 --json "$RUNS/vq-$name/eval.json" --threads 6 \
            > "$RUNS/vq-$name-eval.log" 2>&1 &
        EVAL_PIDS+=($!)
    done
    for pid in "${EVAL_PIDS[@]}"; do wait "$pid"; done
    VQ_RUN=$(python3 scripts/gpu/pick_vq.py "$RUNS/vq-a" "$RUNS/vq-b") || finish 3
    VQ="$VQ_RUN/final"
    log "chosen VQ: $VQ_RUN $(python3 -c "import json; m=json.load(open('$VQ_RUN/eval.json')); print({k: m[k] for k in ('psnr','oracle_accuracy','codebook_usage')})")"
    python3 scripts/gpu/pack.py "$VQ_RUN" "$OUT/vq.tar" --keep-fp32 | tee -a "$OUT/pipeline.log"
else
    VQ=$GIVEN_VQ
    log "using the given VQ $VQ"
fi
if [ "$preflight_ok" = 0 ]; then
    tail_of "$RUNS/preflight.log"; [ -f "$RUNS/preflight-sft.log" ] && tail_of "$RUNS/preflight-sft.log"
    log "preflight failed: stopping after the VQ stage"; finish 4
fi

# --- 2. pretraining, one run per K of PRE_KS side by side -------------------------------------------------
PRE_PIDS=()
K_MAIN=0
for k in $PRE_KS; do
    [ "$k" -gt "$K_MAIN" ] && K_MAIN=$k
    precache pretrain "$RUNS/pretrain-k$k"
    cm3 train pretrain --preset shapes --out "$RUNS/pretrain-k$k" --minutes "$PRE_MIN" --retrieved "$k" \
        --vq "$VQ" --tokenizer-dir models/shapes --device "$DEVICE" --batch-size "$PRE_BATCH" --lr "$PRE_LR" \
        --train-scenes "$TRAIN_SCENES" --data-workers "$WORKERS" --checkpoint-minutes 1 --horizon-follows-speed \
        > "$RUNS/pretrain-k$k.log" 2>&1 &
    PRE_PIDS+=($!)
done
for pid in "${PRE_PIDS[@]}"; do wait "$pid" || log "a pretraining run failed (pid $pid)"; done
for k in $PRE_KS; do
    tail_of "$RUNS/pretrain-k$k.log"
    [ -d "$RUNS/pretrain-k$k/final" ] && python3 scripts/gpu/pack.py "$RUNS/pretrain-k$k" "$OUT/pretrain-k$k.tar" \
        | tee -a "$OUT/pipeline.log"
done
SFT_FROM=${SFT_INIT:-$RUNS/pretrain-k$K_MAIN/final}
[ -d "$SFT_FROM" ] || finish 5

# --- 3. instruction tuning from the largest-K model ----------------------------------------------------------
if [ "$sft_ok" = 1 ]; then
    precache sft "$RUNS/sft"
    cm3 train sft --init "$SFT_FROM" --out "$RUNS/sft" --mix "$SFT_MIX" --minutes "$SFT_MIN" "${SFT_POOLS[@]}" \
        --retrieved 2 --data-workers "$SFT_WORKERS" --device "$DEVICE" --batch-size "$PRE_BATCH" --lr "$SFT_LR" \
        --checkpoint-minutes 1 --horizon-follows-speed > "$RUNS/sft.log" 2>&1
    tail_of "$RUNS/sft.log"
    if [ -d "$RUNS/sft/final" ]; then
        python3 scripts/gpu/pack.py "$RUNS/sft" "$OUT/sft.tar" --keep-fp32 | tee -a "$OUT/pipeline.log"
        split_if_large "$OUT/sft.tar"
    fi
else
    tail_of "$RUNS/preflight-sft.log"; log "SFT preflight failed: no SFT stage"
fi
if [ -n "$VQ_FT_PID" ]; then
    wait "$VQ_FT_PID"; VQ_FT_PID=""
    tail_of "$RUNS/vq-ft.log"
    [ -d "$RUNS/vq-ft/final" ] && python3 scripts/gpu/pack.py "$RUNS/vq-ft" "$OUT/vq-ft.tar" --keep-fp32 \
        | tee -a "$OUT/pipeline.log" && split_if_large "$OUT/vq-ft.tar"
fi
finish 0
