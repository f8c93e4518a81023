"""`cm3leon eval SUITE --json FILE`: every suite writes a JSON object of metrics and prints a short table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cm3leon.bundle import ModelBundle

eval_app = typer.Typer(no_args_is_help=True)

# Options every suite shares.
DecoderThreadsOption = Annotated[
    int | None, typer.Option(help="Torch intra-op threads (default: leave torch's choice; 1 on a busy 2-core box).")
]
DecoderJsonOption = Annotated[Path | None, typer.Option("--json", help="Write the metrics as one JSON object here.")]


@eval_app.command("oracle")
def eval_oracle(
    n: Annotated[int, typer.Option(help="Test shapes scenes (and as many text scenes).")] = 1000,
    json_path: DecoderJsonOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the test scenes and of the noise.")] = 0,
    world: Annotated[str, typer.Option(help="World preset: shapes or shapes32.")] = "shapes",
    degradation: Annotated[str, typer.Option(help="Degradation strengths: standard or harsh.")] = "standard",
) -> None:
    """How often the oracle recovers the exact scene from clean and degraded renders of test scenes."""
    from cm3leon.data.world import WorldConfig
    from cm3leon.evaluation.oracle_eval import DegradationConfig, evaluate_oracle
    from cm3leon.evaluation.report import write_report

    metrics = evaluate_oracle(n, seed, WorldConfig.preset(world), DegradationConfig.preset(degradation))
    write_report(f"oracle accuracy ({degradation} degradations)", metrics, json_path)


# --- decoder suites: t2i, caption, perplexity, sweep ----------------------------------------------------------

DecoderCheckpointOption = Annotated[Path, typer.Option("--checkpoint", help="Complete model directory (with vq/).")]
# Text->image's options, shared by `eval t2i` and `eval all`.
PooledCandidatesOption = Annotated[
    int | None, typer.Option(help="Candidates of the pooled method (default: the `pooled` preset's, 8).")
]
MemoryOption = Annotated[
    Path | None, typer.Option(help="Embedded Qdrant directory (`corpus build --path`): adds t2i cfg_retrieval.")
]
MemoryNameOption = Annotated[str, typer.Option(help="Memory (collection) name.")]
PromptBatchOption = Annotated[int, typer.Option(help="Prompts decoded together.")]


def _comma_separated(text: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c"): the names of a comma-separated option, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _grid_beside(json_path: Path | None) -> Path | None:
    """The grid PNG goes next to the JSON report: same name, suffix .png."""
    return json_path.with_suffix(".png") if json_path is not None else None


def _load_decoder(checkpoint: Path, threads: int | None, device: str = "cpu") -> ModelBundle:
    """Torch's thread count set, then the model directory with its VQ tokenizer: how every decoder suite starts."""
    from cm3leon.bundle import ModelBundle
    from cm3leon.evaluation.decoder_setup import set_threads

    set_threads(threads)
    return ModelBundle.load(checkpoint, device=device, require_vq=True)


@eval_app.command("t2i")
def eval_t2i(
    checkpoint: DecoderCheckpointOption,
    n: Annotated[int, typer.Option(help="Held-out scenes (object counts cycle 1..3).")] = 200,
    json_path: DecoderJsonOption = None,
    split: Annotated[str, typer.Option(help="test (or test_compositional).")] = "test",
    batch_size: PromptBatchOption = 16,
    seed: Annotated[int, typer.Option(help="Seed of the scenes, captions and samples.")] = 0,
    methods: Annotated[str, typer.Option(help="Comma-separated: plain, cfg, cdk, pooled.")] = "plain,cfg",
    compositional: Annotated[bool, typer.Option(help="Also a smaller test_compositional section.")] = True,
    retriever: Annotated[
        Path | None,
        typer.Option(help="Retriever for `fd` and for reranking pooled candidates (skipped if absent or mismatched)."),
    ] = Path("models/shapes/retriever"),
    pooled_candidates: PooledCandidatesOption = None,
    memory: MemoryOption = None,
    memory_name: MemoryNameOption = "shapes",
    threads: DecoderThreadsOption = None,
) -> None:
    """Text->image: generate from held-out detailed captions, the oracle judges each image (grid PNG beside
    the JSON). Decoding parameters come from DIR/decoding_defaults.json (see `eval sweep`) or the presets."""
    from cm3leon.evaluation.report import write_report
    from cm3leon.evaluation.t2i_eval import POOLED_CANDIDATES, T2IEvalConfig
    from cm3leon.evaluation.t2i_task_eval import evaluate_t2i, load_fd_retriever

    config = T2IEvalConfig(
        n=n, batch_size=batch_size, seed=seed, split=split, compositional=compositional,
        methods=_comma_separated(methods),
        pooled_candidates=pooled_candidates or POOLED_CANDIDATES,
    )
    loaded = _load_decoder(checkpoint, threads)
    fd_retriever = load_fd_retriever(retriever, loaded.image_tokenizer.config.image_size)
    with _memory_retrieval(memory, memory_name, retriever, loaded) as retrieval:
        metrics = evaluate_t2i(
            loaded, config, grid_path=_grid_beside(json_path), retriever=fd_retriever, retrieval=retrieval
        )
    write_report(f"text->image ({split}, n={n})", metrics, json_path)


@eval_app.command("caption")
def eval_caption(
    checkpoint: DecoderCheckpointOption,
    n: Annotated[int, typer.Option(help="Held-out test images to caption.")] = 200,
    json_path: DecoderJsonOption = None,
    batch_size: Annotated[int, typer.Option(help="Images captioned together.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the scenes and samples.")] = 0,
    threads: DecoderThreadsOption = None,
) -> None:
    """Captioning: IMAGE <break> -> caption, parsed back exactly; exact-scene accuracy and BLEU-4."""
    from cm3leon.evaluation.caption_eval import CaptionEvalConfig, evaluate_captioning
    from cm3leon.evaluation.report import write_report

    config = CaptionEvalConfig(n=n, batch_size=batch_size, seed=seed)
    bundle = _load_decoder(checkpoint, threads)
    metrics = evaluate_captioning(bundle, config, grid_path=_grid_beside(json_path))
    write_report(f"captioning (test, n={n})", metrics, json_path)


@eval_app.command("perplexity")
def eval_perplexity(
    checkpoint: DecoderCheckpointOption,
    json_path: DecoderJsonOption = None,
    batch_size: Annotated[int, typer.Option(help="Rows per held-out batch.")] = 8,
    batches: Annotated[int | None, typer.Option(help="Batches per split (default: the data config's).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Image-code cache (default: the run's cache/).")] = None,
    threads: DecoderThreadsOption = None,
) -> None:
    """Held-out (val and test) loss and perplexity per modality: text tokens vs image tokens."""
    from cm3leon.evaluation.perplexity_eval import PerplexityEvalConfig, evaluate_heldout_perplexity
    from cm3leon.evaluation.report import write_report

    config = PerplexityEvalConfig(batch_size=batch_size, n_batches=batches)
    metrics = evaluate_heldout_perplexity(_load_decoder(checkpoint, threads), config, cache_dir)
    write_report("held-out perplexity", metrics, json_path)


@eval_app.command("sweep")
def eval_sweep(
    checkpoint: DecoderCheckpointOption,
    n: Annotated[int, typer.Option(help="Validation scenes per setting.")] = 64,
    json_path: DecoderJsonOption = None,
    temperatures: Annotated[str, typer.Option(help="Text->image temperatures, comma-separated.")] = "0.7,1.0",
    scales: Annotated[str, typer.Option(help="CFG scales, comma-separated.")] = "1,2,3,5",
    plausibilities: Annotated[
        str, typer.Option(help="Guidance plausibility thresholds, comma-separated (0: plain CFG).")
    ] = "0,0.1",
    cdk_ks: Annotated[str, typer.Option(help="CD-K reference ranks k, comma-separated.")] = "1,5",
    edit_scales: Annotated[str, typer.Option(help="Editing text guidance scales, comma-separated.")] = "1.5,3,7.5",
    edit_copy_biases: Annotated[
        str, typer.Option(help="Editing source-copy biases (0 = off), comma-separated, crossed with the scales.")
    ] = "0,1,2,3,4",
    edit_candidates: Annotated[
        str, typer.Option(help="Edit candidates at the best scale and bias, comma-separated (several: the caption "
                          "check chooses).")
    ] = "1,8",
    structure_scales: Annotated[
        str, typer.Option(help="Structure-guided generation CFG scales, comma-separated.")
    ] = "1.5,2,3",
    structure_candidates: Annotated[
        str, typer.Option(help="Structure-guided candidates per map, comma-separated (several: reranked).")
    ] = "1,8",
    grounded_candidates: Annotated[
        str, typer.Option(help="Grounded-generation candidates per prompt, comma-separated (several: reranked).")
    ] = "1,8",
    text_render_candidates: Annotated[
        str, typer.Option(help="Text-rendering candidates per word, comma-separated (several: the first the model "
                          "reads back as the word asked for).")
    ] = "1,8,16",
    retriever: Annotated[
        Path | None,
        typer.Option(help="Retriever reranking several structure-guided or grounded candidates (else: likelihood)."),
    ] = Path("models/shapes/retriever"),
    caption_temperatures: Annotated[str, typer.Option(help="Caption temperatures (0 = greedy).")] = "0,0.7,1",
    caption_candidates: Annotated[
        str, typer.Option(help="Captions sampled per image and reranked by the noisy channel, comma-separated.")
    ] = "1,16",
    segmentation_settings: Annotated[
        str,
        typer.Option(help="Segmentation temperature:candidates pairs, comma-separated (0:1 = greedy; more "
                     "candidates: maps redrawn where the greedy one disagrees with the caption)."),
    ] = "0:1,0.7:8,1:8,0.7:16",
    batch_size: PromptBatchOption = 16,
    seed: Annotated[int, typer.Option(help="Seed of the scenes and samples.")] = 0,
    write_defaults: Annotated[bool, typer.Option(help="Save the best setting as DIR/decoding_defaults.json.")] = False,
    threads: DecoderThreadsOption = None,
) -> None:
    """Sweep temperature x CFG scale x guidance plausibility and CD-K's k (text->image), the editing guidance
    scale x source-copy bias, the structure-guided guidance scale x candidates, the grounded and text-rendering
    candidates, caption temperature x candidates and the segmentation maps' caption check, on the VALIDATION split."""
    from cm3leon.decoding.defaults import save_decoding_defaults
    from cm3leon.evaluation.report import write_report
    from cm3leon.evaluation.sweep import SweepConfig, best_defaults, run_sweep
    from cm3leon.evaluation.t2i_eval import retriever_reranker
    from cm3leon.evaluation.t2i_task_eval import load_fd_retriever

    def floats(text: str) -> tuple[float, ...]:
        return tuple(float(value) for value in text.split(",") if value.strip())

    def pairs(text: str) -> tuple[tuple[float, int], ...]:
        try:
            return tuple((float(t), int(k)) for t, k in (p.split(":") for p in text.split(",") if p.strip()))
        except ValueError as error:
            hint = "--segmentation-settings"
            raise typer.BadParameter(f"{text!r}: expected temperature:candidates pairs", param_hint=hint) from error

    config = SweepConfig(
        n=n, batch_size=batch_size, seed=seed, temperatures=floats(temperatures), guidance_scales=floats(scales),
        plausibilities=floats(plausibilities), cdk_ks=tuple(int(k) for k in floats(cdk_ks)),
        edit_scales=floats(edit_scales), edit_copy_biases=floats(edit_copy_biases),
        edit_candidates=tuple(int(count) for count in floats(edit_candidates)),
        structure_scales=floats(structure_scales),
        structure_candidates=tuple(int(count) for count in floats(structure_candidates)),
        grounded_candidates=tuple(int(count) for count in floats(grounded_candidates)),
        text_render_candidates=tuple(int(count) for count in floats(text_render_candidates)),
        caption_temperatures=floats(caption_temperatures),
        caption_candidates=tuple(int(count) for count in floats(caption_candidates)),
        segmentation_settings=pairs(segmentation_settings),
    )
    loaded = _load_decoder(checkpoint, threads)
    loaded_retriever = load_fd_retriever(retriever, loaded.image_tokenizer.config.image_size)
    report = run_sweep(loaded, config, retriever_reranker(loaded, loaded_retriever), loaded_retriever)
    write_report(f"decoding sweep (val, n={n})", report, json_path)
    if write_defaults:
        provenance = {"source": "cm3leon eval sweep", "split": report["split"], "n": n, "seed": seed}
        path = save_decoding_defaults(checkpoint, best_defaults(report), provenance)
        typer.echo(f"wrote {path}")


def check_tokenizer_dir(directory: Path) -> None:
    """A usage error naming the folder to pass when `directory` holds no VQ tokenizer (e.g. the model's folder)."""
    if (directory / "config.json").exists():
        return
    if (directory / "vq" / "config.json").exists():
        raise typer.BadParameter(
            f"{directory} is a model directory; pass its tokenizer folder: --checkpoint {directory / 'vq'}",
            param_hint="--checkpoint",
        )
    raise typer.BadParameter(
        f"no VQ tokenizer in {directory} (config.json + model.safetensors, e.g. models/shapes/vq)",
        param_hint="--checkpoint",
    )


@eval_app.command("vq")
def eval_vq(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Tokenizer directory (config.json + model.safetensors), or a run dir.")
    ],
    n: Annotated[int, typer.Option(help="Test shapes scenes (each also gives a segmentation picture).")] = 500,
    json_path: DecoderJsonOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the test scenes.")] = 0,
    world: Annotated[str, typer.Option(help="World preset of the tokenizer: shapes (64px), shapes32.")] = "shapes",
    threads: DecoderThreadsOption = None,
) -> None:
    """Round-trip test scenes through the VQ tokenizer: PSNR, oracle exact-scene accuracy on reconstructions,
    codebook usage, segmentation and word accuracy, speed (grid PNG beside the JSON)."""
    from cm3leon.evaluation.decoder_setup import set_threads
    from cm3leon.evaluation.report import write_report
    from cm3leon.evaluation.vq_eval import VQEvalConfig, evaluate_vq
    from cm3leon.tokenizers.image import ImageTokenizer
    from cm3leon.training.vq import FINAL_SUBDIR

    set_threads(threads)
    directory = checkpoint / FINAL_SUBDIR if (checkpoint / FINAL_SUBDIR).is_dir() else checkpoint
    check_tokenizer_dir(directory)
    tokenizer = ImageTokenizer.from_pretrained(directory)
    metrics = evaluate_vq(tokenizer, VQEvalConfig(n=n, seed=seed, world_preset=world), _grid_beside(json_path))
    write_report(f"VQ image tokenizer ({directory}, test, n={n})", metrics, json_path)


@eval_app.command("retrieval")
def eval_retrieval(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Retriever directory (Retriever.from_pretrained).")],
    n: Annotated[int, typer.Option(help="Test caption/image pairs: the gallery size of each direction.")] = 1000,
    json_path: DecoderJsonOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the test scenes and captions.")] = 0,
    split: Annotated[str, typer.Option(help="test (or test_compositional, val).")] = "test",
    threads: DecoderThreadsOption = None,
) -> None:
    """Recall@1/5 text->image and image->text (a hit is any item of exactly the query's scene), and the
    Fréchet-distance floor of two independent real image sets in the retriever's image features."""
    from cm3leon.evaluation.decoder_setup import set_threads
    from cm3leon.evaluation.report import write_report
    from cm3leon.evaluation.retrieval_eval import evaluate_retrieval
    from cm3leon.retrieval.retriever import Retriever

    set_threads(threads)
    metrics = evaluate_retrieval(Retriever.from_pretrained(checkpoint), n=n, seed=seed, split=split)
    write_report(f"retrieval ({split}, n={n})", metrics, json_path)


@eval_app.command("all")
def eval_all(
    checkpoint: DecoderCheckpointOption,
    n: Annotated[int, typer.Option(help="Held-out cases per task (t2i's compositional section gets n/4).")] = 200,
    json_path: DecoderJsonOption = None,
    split: Annotated[
        str, typer.Option(help="test (or test_compositional); val to choose between checkpoints (no compositional).")
    ] = "test",
    batch_size: PromptBatchOption = 16,
    seed: Annotated[int, typer.Option(help="Seed of the cases and samples.")] = 0,
    methods: Annotated[str, typer.Option(help="t2i methods, comma-separated.")] = "plain,cfg,cdk,pooled",
    tasks: Annotated[str, typer.Option(help="Tasks to run, comma-separated (t2i, caption, vqa, ...), or all.")] = "all",
    question_n: Annotated[
        int | None, typer.Option(help="VQA and reasoning questions (default n); more narrows their noise.")
    ] = None,
    retriever: Annotated[
        Path | None, typer.Option(help="Retriever whose image features give t2i's Fréchet distance.")
    ] = Path("models/shapes/retriever"),
    pooled_candidates: PooledCandidatesOption = None,
    memory: MemoryOption = None,
    memory_name: MemoryNameOption = "shapes",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: DecoderThreadsOption = None,
) -> None:
    """Every instruction task on held-out cases: one JSON (a section per task + `summary`) and a labelled grid
    PNG per task beside it (<stem>_<task>.png). With --memory, t2i also decodes CFG with retrieved documents."""
    from cm3leon.data.world import Split
    from cm3leon.evaluation.report import write_report
    from cm3leon.evaluation.t2i_eval import POOLED_CANDIDATES
    from cm3leon.evaluation.task_cases import EVAL_TASKS, TaskEvalConfig
    from cm3leon.evaluation.tasks_eval import evaluate_all

    config = TaskEvalConfig(
        n=n, batch_size=batch_size, seed=seed, split=split,
        t2i_methods=_comma_separated(methods),
        pooled_candidates=pooled_candidates or POOLED_CANDIDATES,
        compositional=Split(split) is not Split.VAL,
        tasks=EVAL_TASKS if tasks == "all" else _comma_separated(tasks),
        question_n=question_n,
    )
    loaded = _load_decoder(checkpoint, threads, device)
    with _memory_retrieval(memory, memory_name, retriever, loaded) as retrieval:
        report = evaluate_all(loaded, config, json_path, retriever, retrieval)
    write_report(f"all tasks ({split}, n={n})", report["summary"], None)  # the table: the summary only
    if json_path is not None:
        _write_json(report, json_path)


@contextmanager
def _memory_retrieval(
    memory: Path | None, memory_name: str, retriever: Path | None, loaded: Any
) -> Iterator[Any]:
    """Captions -> retrieved-document prefixes from the embedded memory at `memory` (None without --memory)."""
    if memory is None:
        yield None
        return
    from cm3leon.evaluation.retrieval_prefix import memory_prefix, open_memory
    from cm3leon.retrieval.retriever import Retriever

    if retriever is None or not retriever.exists():
        raise typer.BadParameter("--memory needs --retriever (the one that built the memory)")
    query_encoder = Retriever.from_pretrained(retriever)
    store = open_memory(memory, memory_name, query_encoder)
    try:
        yield memory_prefix(store, query_encoder, loaded.vocab, loaded.model.config.max_seq_len)
    finally:
        store.close()


def _write_json(report: dict[str, object], json_path: Path) -> None:
    import json

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(f"wrote {json_path}")
