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
# The benchmark's own functions (not the CLI), so the script does not depend on where the commands live.
PYTHONPATH=${PYTHONPATH:-.} "$PYTHON" - "$OUT" "$PRESET" "$MODEL" "$DEVICE" "$DTYPE" "$THREADS" "$HF" <<'PY' 2>&1 | tee "$OUT/bench_serve.log"
import json, sys
from pathlib import Path

from cm3leon.bench.serve import ServeBenchConfig, bench_serve, write_serve_extras

out, preset, model, device, dtype, threads, hf = sys.argv[1:]
config = ServeBenchConfig.preset(preset, device=device, dtype=dtype, threads=int(threads), hf=hf == "1")
results = bench_serve(Path("models/shapes"), config, model)
name = f"serve_{model}_{device}"
(Path(out) / f"{name}.json").write_text(json.dumps({"benchmark": name, **results}, indent=2, default=str) + "\n")
for key in ("engine_speedup_16", "engine_speedup_16_burst", "continuous_vs_static_16", "hf_speedup_b1", "hf_speedup_b16"):
    print(f"{key:<28} {results.get(key)}")
print("wrote", *write_serve_extras(Path(out), name, results))
PY
