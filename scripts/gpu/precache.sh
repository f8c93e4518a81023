#!/usr/bin/env bash
# Build on a CPU, before a GPU call, the caches that the GPU pipeline would otherwise spend its minutes on: the
# pretraining corpus's VQ codes and retrieved neighbours, and the SFT task pools' codes and neighbours. Each comes
# from a one-step run with the same data flags as the pipeline's (cache files are keyed by content: the VQ's and
# the retriever's fingerprints, the world, the pool sizes, the retrieval rules), then only the cache is kept.
#
#   scripts/gpu/precache.sh DIR          # then: PRECACHE=DIR (carried to the GPU machine) scripts/gpu/pipeline.sh
#
# Settings (environment) must match the pipeline call: TRAIN_SCENES, PRE_K (one K; run again for others),
# SFT_SCENES / SFT_WORDS / SFT_EDITS (empty: the preset's pools), SFT_POOL_SEED, VQ. About 10 CPU minutes per 100k images.
set -euo pipefail
DIR=${1:?usage: precache.sh DIR}
TRAIN_SCENES=${TRAIN_SCENES:-100000}
PRE_K=${PRE_K:-2}
VQ=${VQ:-models/shapes/vq}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cm3() { python3 -c 'from cm3leon.cli import main; main()' "$@"; }
POOLS=()
[ -n "${SFT_SCENES:-}" ] && POOLS+=(--scenes "$SFT_SCENES")
[ -n "${SFT_WORDS:-}" ] && POOLS+=(--words "$SFT_WORDS")
[ -n "${SFT_EDITS:-}" ] && POOLS+=(--edits "$SFT_EDITS")
[ -n "${SFT_POOL_SEED:-}" ] && POOLS+=(--pool-seed "$SFT_POOL_SEED")

mkdir -p "$DIR/pretrain" "$DIR/sft"
cm3 train pretrain --preset shapes --out "$SCRATCH/pretrain" --steps 1 --train-scenes "$TRAIN_SCENES" \
    --retrieved "$PRE_K" --vq "$VQ" --tokenizer-dir models/shapes --device cpu --batch-size 1 --data-workers 1
cp "$SCRATCH/pretrain/cache/"* "$DIR/pretrain/"
# SFT's pools depend on the VQ and the world only, so the shipped model serves as a stand-in init (its VQ: the
# caches match a pipeline run whose model carries models/shapes/vq).
[ "$VQ" = models/shapes/vq ] || echo "note: the SFT caches are made with models/shapes/vq, not $VQ" >&2
cm3 train sft --init models/shapes --out "$SCRATCH/sft" --steps 1 --retrieved 2 --device cpu --batch-size 1 \
    --data-workers 0 "${POOLS[@]}"
cp "$SCRATCH/sft/cache/"* "$DIR/sft/"
du -sh "$DIR"/*
