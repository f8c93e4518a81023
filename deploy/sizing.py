"""The numbers that size a deployment (docs/deploy.md cites them): tokens per image, model memory per decoder
preset, text-to-image throughput of one CPU worker measured on this machine, and a GPU estimate from FLOP rates.

    python deploy/sizing.py [--json out/sizing.json] [--threads 1] [--batches 1,8]

Parameter counts are exact (each preset built on the meta device with the paper's vocabulary and with the shapes
world's). The CPU measurement decodes real CFG image blocks with the `shapes` preset (random weights: speed does not
depend on them) through the same `generate()` the workers run, best of two passes after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cm3leon.decoding import SamplingParams
from cm3leon.decoding.generate import generate_image_codes
from cm3leon.model import DecoderConfig, Transformer
from cm3leon.tokenizers.image import ImageTokenizerConfig
from cm3leon.tokenizers.text import TextTokenizer
from cm3leon.tokenizers.vocab import Vocabulary, VocabularyConfig

SHAPES_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes"
# The paper's tokenizers (BRIEF: 56,320 BPE entries; 8192 image codes, 32x32 per 256x256 image).
PAPER_TEXT_VOCAB, PAPER_CODEBOOK, PAPER_GRID = 56_320, 8192, 32
BYTES = {"fp32": 4, "bf16": 2}
# Dense bf16 tensor-core peaks (vendor datasheets) and HBM bandwidth, for the GPU estimate.
GPUS = {"A100-80GB": (312e12, 2.0e12), "H100-SXM": (989e12, 3.35e12)}
# Sustained fraction of peak FLOP/s in batched decoding (an assumption, stated in the output).
MFU = 0.4
PROMPT = "a large red circle at the top left on a white background"


def parameters(preset: str, vocab_size: int) -> int:
    with torch.device("meta"):
        return Transformer(DecoderConfig.preset(preset, vocab_size=vocab_size)).num_parameters()


def kv_cache_bytes(preset: str, vocab_size: int, tokens: int, dtype_bytes: int) -> int:
    config = DecoderConfig.preset(preset, vocab_size=vocab_size)
    return 2 * config.n_layers * config.d_model * tokens * dtype_bytes  # keys and values, every layer


def shapes_vocabulary() -> Vocabulary:
    vq = ImageTokenizerConfig(**json.loads((SHAPES_MODEL / "vq" / "config.json").read_text()))
    text = TextTokenizer.load(SHAPES_MODEL)
    return Vocabulary(text, VocabularyConfig(codebook_size=vq.codebook_size, image_grid=vq.grid))


def measure_cpu(vocab: Vocabulary, batches: list[int], threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Transformer(DecoderConfig.preset("shapes", vocab_size=vocab.size)).eval()
    prompt = [vocab.bos_id, *vocab.encode_text(PROMPT), vocab.break_id]
    params = SamplingParams(method="cfg", guidance_scale=3.0, top_p=0.9)
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for batch in batches:
            generate_image_codes(model, vocab, [prompt] * batch, params)  # warm-up
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                generate_image_codes(model, vocab, [prompt] * batch, params)
                best = min(best, time.perf_counter() - start)
            rates[f"cpu_t{threads}_cfg_b{batch}_images_per_s"] = batch / best
    return rates


def gpu_estimate(params_7b: int, tokens_per_image: int) -> dict[str, float]:
    """Seconds per 7B image with CFG (two streams): compute-bound at large batch, bandwidth-bound at batch 1."""
    flops_per_image = 2 * 2 * params_7b * tokens_per_image  # 2 FLOPs per parameter per token, 2 CFG streams
    estimate: dict[str, float] = {}
    for name, (peak, bandwidth) in GPUS.items():
        estimate[f"{name}_images_per_s_batched"] = MFU * peak / flops_per_image
        step_s = params_7b * BYTES["bf16"] / bandwidth  # every weight read once per decode step
        estimate[f"{name}_s_per_image_batch1"] = step_s * tokens_per_image
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    vocab = shapes_vocabulary()
    # The same special tokens and location bins around the paper-sized text and image ranges.
    paper_vocab = PAPER_TEXT_VOCAB + PAPER_CODEBOOK + vocab.size - len(vocab.text_ids) - len(vocab.image_ids)
    report: dict[str, object] = {
        "tokens_per_image": {"shapes": vocab.codes_per_image, "paper": PAPER_GRID * PAPER_GRID},
        "vocab_size": {"shapes": vocab.size, "paper": paper_vocab},
        "mfu_assumed": MFU,
    }
    presets = ("shapes", "350m", "760m", "7b")
    sizes = {p: parameters(p, vocab.size if p == "shapes" else paper_vocab) for p in presets}
    report["parameters"] = sizes
    report["weights_gib"] = {p: {d: n * b / 2**30 for d, b in BYTES.items()} for p, n in sizes.items()}
    report["kv_cache_gib_per_4096_tokens_bf16"] = {
        p: kv_cache_bytes(p, paper_vocab, 4096, BYTES["bf16"]) / 2**30 for p in presets if p != "shapes"
    }
    report["measured"] = measure_cpu(vocab, [int(b) for b in args.batches.split(",")], args.threads)
    report["gpu_estimate_7b"] = gpu_estimate(sizes["7b"], PAPER_GRID * PAPER_GRID)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
