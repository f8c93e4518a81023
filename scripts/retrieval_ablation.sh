#!/usr/bin/env bash
# The retrieval ablation of docs/retrieval.md: pretraining with K = 0, 1, 2 retrieved documents at equal compute
# (the same number of optimizer steps of the same batch of 8 x 640 tokens, so equal FLOPs; K > 0 spends part of
# each row on retrieved documents), then held-out loss and text->image accuracy and fd, without and with
# retrieval at inference. On a GPU, raise STEPS and add `--device cuda`; here it runs one process at a time on CPU.
set -euo pipefail
RUNS=${RUNS:-runs/ablation}
STEPS=${STEPS:-500}
N=${N:-200}
MEMORY=${MEMORY:-$RUNS/qdrant}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUNS"
for k in 0 1 2; do
    cm3leon train pretrain --preset shapes --out "$RUNS/k$k" --steps "$STEPS" --retrieved "$k" \
        --vq models/shapes/vq --tokenizer-dir models/shapes --device cpu --checkpoint-minutes 5
done
[ -d "$MEMORY" ] || cm3leon corpus build --n 10000 --memory shapes --path "$MEMORY" \
    --retriever models/shapes/retriever --vq models/shapes/vq
for k in 0 1 2; do
    cm3leon eval perplexity --checkpoint "$RUNS/k$k/final" --json "$RUNS/k$k-perplexity.json" --threads 1
    cm3leon eval t2i --checkpoint "$RUNS/k$k/final" --n "$N" --methods cfg --no-compositional \
        --memory "$MEMORY" --json "$RUNS/k$k-t2i.json" --threads 1
done
