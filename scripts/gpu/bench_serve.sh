#!/usr/bin/env bash
# The serving benchmark (`cm3leon bench serve`) on one CUDA GPU with the paper's 350m decoder size and random
# weights (the shapes vocabulary and its text->image defaults; the token loop's speed does not depend on what the
# weights learned). bf16 where the GPU supports it, else float32. Results go to $OUT (serve_350m_cuda.json, its
# PNG and summary.json); ratios are measured within the run, on that GPU.
#
#   scripts/gpu/bench_serve.sh                  # on the GPU machine, from the repository root
#   DEVICE=cpu PRESET=quick MODEL=tiny scripts/gpu/bench_serve.sh   # a dry run of the script on a CPU
#
# On CUDA the scheduler is not batch-invariant (`SchedulerConfig.batch_invariant` is off there: cuBLAS picks
# kernels by shape), so a request's tokens can differ in rare near-ties between alone and batched runs.
set -euo pipefail
OUT=${OUT:-out/gpu}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-350m}
PRESET=${PRESET:-standard}
THREADS=${THREADS:-4}
PYTHON=${PYTHON:-python}
HF=${HF:-1}  # 0: skip the Hugging Face peer (e.g. where transformers is not installed)
mkdir -p "$OUT"
if [[ -z "${DTYPE:-}" ]]; then
  DTYPE=$("$PYTHON" -c "import torch; print('bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32')")
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
HF_FLAG=$([[ "$HF" == 1 ]] && echo --hf || echo --no-hf)
PYTHONPATH=${PYTHONPATH:-.} "$PYTHON" -c "from cm3leon.cli import main; main()" bench serve --out "$OUT" \
  --preset "$PRESET" --model-preset "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --threads "$THREADS" "$HF_FLAG" \
  --name "serve_${MODEL}_${DEVICE}" 2>&1 | tee "$OUT/bench_serve.log"
