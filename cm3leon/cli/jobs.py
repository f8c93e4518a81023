"""`cm3leon jobs ...`: the gateway's client on the command line (submit, get, watch, cancel, list).

    cm3leon jobs submit t2i "a large red circle at the top left" --wait --out out/jobs
    cm3leon jobs submit caption picture.png --style short --wait
    cm3leon jobs watch JOB_ID ; cm3leon jobs list --state SUCCEEDED

The gateway and key come from --target / --api-key or CM3LEON_TARGET / CM3LEON_API_KEY. grpc is imported
inside the commands only (the model core never imports the services).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

jobs_app = typer.Typer(no_args_is_help=True)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_API_KEY = "dev-key"
# CLI kind -> (the client's request builder, what the positional arguments are; "..." = one or more).
KINDS: dict[str, tuple[str, str]] = {
    "t2i": ("text_to_image", "PROMPT"),
    "caption": ("caption", "IMAGE"),
    "vqa": ("visual_question", "IMAGE QUESTION"),
    "edit": ("edit", "IMAGE INSTRUCTION"),
    "infill": ("infill", "IMAGE BOX..."),
    "segment": ("segmentation", "IMAGE"),
    "structure": ("structure_guided", "MAP CAPTION"),
    "grounded": ("grounded_generation", "OBJECT@BOX..."),
    "render": ("text_rendering", "TEXT"),
}
Target = Annotated[str, typer.Option(envvar="CM3LEON_TARGET", help="Gateway host:port.")]
ApiKey = Annotated[str, typer.Option(envvar="CM3LEON_API_KEY", help="API key (sent as x-api-key).")]
BOX_HELP = "a box is x0,y0,x1,y1 in [0, 1] of the image's width and height"


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a box: {BOX_HELP}") from None
    return x0, y0, x1, y1


def parse_grounded_object(text: str) -> tuple[str, tuple[float, float, float, float]]:
    """ "large red circle@0,0,0.33,0.33" -> ("large red circle", box)."""
    description, separator, box = text.rpartition("@")
    if not separator or not description:
        raise typer.BadParameter(f"{text!r} is not OBJECT@BOX (e.g. 'small red circle@0,0,0.33,0.33')")
    return description, parse_box(box)


def build_request(
    kind: str, args: list[str], options: dict[str, Any], style: str, num_images: int, extra: dict[str, Any]
) -> Any:
    """The protobuf request of one CLI kind; `extra` holds the kind-specific flags (text, scales, explain)."""
    from services import client as api

    if kind not in KINDS:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    builder, usage = KINDS[kind]
    fixed = [part for part in usage.split() if not part.endswith("...")]
    variadic = len(fixed) < len(usage.split())
    if len(args) < len(fixed) + variadic or (not variadic and len(args) != len(fixed)):
        raise typer.BadParameter(f"`jobs submit {kind}` takes {usage}")
    if builder == "text_to_image":
        return api.text_to_image(args[0], num_images=num_images, **options)
    if builder == "caption":
        return api.caption(args[0], style=style, **options)
    if builder == "visual_question":
        return api.visual_question(args[0], args[1], explain=extra["explain"], **options)
    if builder == "edit":
        scales = {k: extra[k] for k in ("text_guidance_scale", "image_guidance_scale", "source_copy_bias")}
        return api.edit(args[0], args[1], **scales, **options)
    if builder == "infill":
        return api.infill(args[0], [parse_box(a) for a in args[1:]], text=extra["text"], seed=options["seed"])
    if builder == "segmentation":
        return api.segmentation(args[0])
    if builder == "structure_guided":
        return api.structure_guided(args[0], args[1], **options)
    if builder == "grounded_generation":
        return api.grounded_generation([parse_grounded_object(a) for a in args], prompt=extra["text"], **options)
    return api.text_rendering(args[0], **options)


def show(job: Any) -> None:
    from google.protobuf.json_format import MessageToJson

    typer.echo(MessageToJson(job, indent=2))


def save_outputs(job: Any, out: Path) -> list[Path]:
    from google.protobuf.json_format import MessageToDict

    from services.client import download

    out.mkdir(parents=True, exist_ok=True)
    paths = [download(image, out / f"{job.job_id}-{i}.png") for i, image in enumerate(job.result.images)]
    record = out / f"{job.job_id}.json"
    record.write_text(json.dumps(MessageToDict(job), indent=2) + "\n")
    return [*paths, record]


def wait_with_progress(client: Any, job_id: str) -> Any:
    from tqdm import tqdm

    from services.api import jobs_pb2

    with tqdm(total=1, unit="tok", dynamic_ncols=True, desc="queued") as bar:

        def update(job: Any) -> None:
            bar.set_description(jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower())
            if job.progress.tokens_total:
                bar.total = job.progress.tokens_total
                bar.n = job.progress.tokens_done
                bar.refresh()

        return client.wait(job_id, on_update=update)


@jobs_app.command("submit")
def submit(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(f'{k} {v[1]}' for k, v in KINDS.items())}.")],
    args: Annotated[list[str], typer.Argument(help="The kind's inputs (text, or image file paths / key:OBJECT).")],
    wait: Annotated[bool, typer.Option(help="Watch the job with a progress bar until it finishes.")] = False,
    out: Annotated[Path | None, typer.Option(help="With --wait: download outputs and the job JSON here.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (reproducible output).")] = None,
    num_images: Annotated[int, typer.Option(help="t2i: images to generate.")] = 1,
    method: Annotated[str | None, typer.Option(help="sample, cfg, cdk or pooled (default: the model's).")] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    guidance_scale: Annotated[float | None, typer.Option()] = None,
    guidance_plausibility: Annotated[
        float | None, typer.Option(help="Guided sampling among tokens >= this fraction of the likeliest, [0, 1].")
    ] = None,
    retrieved_k: Annotated[int | None, typer.Option(help="Documents retrieved from the memory as context.")] = None,
    memory: Annotated[str | None, typer.Option(help="Retrieval memory to search (default: the worker's).")] = None,
    style: Annotated[str, typer.Option(help="caption: short or detailed.")] = "detailed",
    text: Annotated[str, typer.Option(help="infill: optional caption; grounded: the background ('on black').")] = "",
    explain: Annotated[bool, typer.Option(help="vqa: return the worked answer of a two-step question.")] = False,
    text_guidance_scale: Annotated[
        float | None, typer.Option(help="edit: text guidance (default: the model's).")
    ] = None,
    image_guidance_scale: Annotated[
        float | None, typer.Option(help="edit: image guidance (default: the model's).")
    ] = None,
    source_copy_bias: Annotated[
        float | None, typer.Option(help="edit: keep the source's codes where the instruction allows (0: off).")
    ] = None,
    plain: Annotated[
        bool, typer.Option(help="Decode without the model's own policy for the kind (e.g. no edit redraws).")
    ] = False,
    request_id: Annotated[str, typer.Option(help="Idempotency key: a retry returns the same job.")] = "",
    target: Target = DEFAULT_TARGET,
    api_key: ApiKey = DEFAULT_API_KEY,
) -> None:
    """Submit a job; prints its id (and with --wait, its final state and where the outputs went). Images are file
    paths or key:OBJECT; a BOX is x0,y0,x1,y1 in [0, 1]; e.g. `jobs submit grounded "red circle@0,0,0.33,0.33"
    --text "on black"`, `jobs submit infill scene.png 0.33,0.33,0.66,0.66`."""
    from services.api import jobs_pb2
    from services.client import Client

    options = dict(
        seed=seed,
        method=method,
        temperature=temperature,
        top_p=top_p,
        guidance_scale=guidance_scale,
        guidance_plausibility=guidance_plausibility,
        retrieved_k=retrieved_k,
        memory=memory,
    )
    extra = dict(
        text=text, explain=explain, text_guidance_scale=text_guidance_scale, image_guidance_scale=image_guidance_scale,
        source_copy_bias=source_copy_bias,
    )
    request = build_request(kind, args, options, style, num_images, extra)
    request.plain = plain
    with Client(target, api_key) as client:
        job = client.submit(request, request_id=request_id)
        typer.echo(f"job {job.job_id} {jobs_pb2.JobState.Name(job.state)} (queue position {job.queue_position})")
        if not wait:
            return
        job = wait_with_progress(client, job.job_id)
        typer.echo(f"job {job.job_id} {jobs_pb2.JobState.Name(job.state)}")
        if job.error.code:
            typer.echo(f"error {job.error.code}: {job.error.message}")
        if job.result.text:
            typer.echo(f"text: {job.result.text}")
        if out is not None:
            for path in save_outputs(job, out):
                typer.echo(f"wrote {path}")
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            raise typer.Exit(1)


@jobs_app.command("get")
def get(job_id: str, target: Target = DEFAULT_TARGET, api_key: ApiKey = DEFAULT_API_KEY) -> None:
    """Print the job as JSON."""
    from services.client import Client

    with Client(target, api_key) as client:
        show(client.get(job_id))


@jobs_app.command("watch")
def watch(
    job_id: str,
    after: Annotated[int, typer.Option(help="Resume after this sequence number.")] = 0,
    target: Target = DEFAULT_TARGET,
    api_key: ApiKey = DEFAULT_API_KEY,
) -> None:
    """Print one line per snapshot until the job finishes."""
    from services.api import jobs_pb2
    from services.client import Client

    with Client(target, api_key) as client:
        for job in client.watch(job_id, after):
            state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
            preview = f" preview={job.preview.url}" if job.preview.key else ""
            typer.echo(f"#{job.sequence} {state} {job.progress.tokens_done}/{job.progress.tokens_total}{preview}")


@jobs_app.command("cancel")
def cancel(job_id: str, target: Target = DEFAULT_TARGET, api_key: ApiKey = DEFAULT_API_KEY) -> None:
    from services.api import jobs_pb2
    from services.client import Client

    with Client(target, api_key) as client:
        job = client.cancel(job_id)
        typer.echo(f"job {job.job_id} {jobs_pb2.JobState.Name(job.state)}")


@jobs_app.command("list")
def list_jobs(
    state: Annotated[list[str] | None, typer.Option(help="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED.")] = None,
    page_size: Annotated[int, typer.Option()] = 20,
    page_token: Annotated[str, typer.Option()] = "",
    target: Target = DEFAULT_TARGET,
    api_key: ApiKey = DEFAULT_API_KEY,
) -> None:
    """One line per job, newest first; prints the next page's token when there is one."""
    from services.api import jobs_pb2
    from services.client import Client

    states = [jobs_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in state or []]
    with Client(target, api_key) as client:
        page = client.list(states, page_size, page_token)
        for job in page.jobs:
            name = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
            typer.echo(f"{job.job_id}  {name:<9}  {job.kind:<15}  {job.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}")
        if page.next_page_token:
            typer.echo(f"next page: --page-token {page.next_page_token}")
