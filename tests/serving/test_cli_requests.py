"""`cm3leon jobs submit KIND ...` builds the right request for every kind (no stack needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from cm3leon.cli.jobs import KINDS, build_request, jobs_app
from services.api import jobs_pb2

NO_OPTIONS = dict(
    seed=7, method=None, temperature=None, top_p=None, guidance_scale=None, guidance_plausibility=None,
    retrieved_k=None, memory=None,
)
NO_EXTRA = dict(
    text="", explain=False, text_guidance_scale=None, image_guidance_scale=None, source_copy_bias=None
)


@pytest.fixture()
def png(tmp_path: Path) -> str:
    from PIL import Image

    path = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "white").save(path)
    return str(path)


def test_every_kind_builds_its_oneof(png: str) -> None:
    cases = {
        "t2i": ["a large red circle"],
        "caption": [png],
        "vqa": [png, "What colour is the circle?"],
        "edit": [png, "make the circle blue"],
        "infill": [png, "0.33,0.33,0.66,0.66", "0,0,0.33,0.33"],
        "segment": [png],
        "structure": [png, "a small red circle on white"],
        "grounded": ["large red circle@0,0,0.33,0.33", "small blue star@0.66,0.66,1,1"],
        "render": ["AB in blue"],
    }
    assert set(cases) == set(KINDS)
    for kind, args in cases.items():
        request = build_request(kind, args, dict(NO_OPTIONS), "detailed", 1, dict(NO_EXTRA, text="on black"))
        assert request.WhichOneof("kind") == KINDS[kind][0], kind
    infill = build_request("infill", cases["infill"], dict(NO_OPTIONS), "detailed", 1, NO_EXTRA).infill
    # Boxes travel as float32: compare approximately.
    assert [(b.x0, b.y1) for b in infill.regions] == [pytest.approx((0.33, 0.66)), pytest.approx((0.0, 0.33))]
    assert infill.sampling.seed == 7
    background = dict(NO_EXTRA, text="on black")
    grounded = build_request("grounded", cases["grounded"], dict(NO_OPTIONS), "detailed", 1, background)
    assert [o.description for o in grounded.grounded_generation.objects] == ["large red circle", "small blue star"]
    assert grounded.grounded_generation.prompt == "on black"
    scales = dict(NO_EXTRA, text_guidance_scale=5.0, image_guidance_scale=2.0, source_copy_bias=1.5)
    edit = build_request("edit", cases["edit"], dict(NO_OPTIONS), "detailed", 1, scales).edit
    assert (edit.text_guidance_scale, edit.image_guidance_scale, edit.source_copy_bias) == (5.0, 2.0, 1.5)
    unset = build_request("edit", cases["edit"], dict(NO_OPTIONS), "detailed", 1, NO_EXTRA).edit
    assert not unset.HasField("source_copy_bias")
    assert isinstance(edit, jobs_pb2.Edit)


def test_guidance_plausibility_is_sent_only_when_given() -> None:
    unset = build_request("t2i", ["a red circle"], dict(NO_OPTIONS), "detailed", 1, NO_EXTRA).text_to_image.sampling
    assert not unset.HasField("guidance_plausibility"), "unset: the model's default applies"
    options = dict(NO_OPTIONS, guidance_plausibility=0.25)
    for kind, args in (("t2i", ["a red circle"]), ("render", ["AB"])):
        request = build_request(kind, args, options, "detailed", 1, NO_EXTRA)
        sampling = getattr(request, request.WhichOneof("kind")).sampling
        assert sampling.HasField("guidance_plausibility") and sampling.guidance_plausibility == 0.25, kind
    submit = typer.main.get_command(jobs_app).commands["submit"]  # type: ignore[attr-defined]
    flags = {flag for param in submit.params for flag in param.opts}
    assert {"--guidance-scale", "--guidance-plausibility"} <= flags


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("infill", ["x.png"], "IMAGE BOX"),
        ("infill", ["x.png", "1,2,3"], "not a box"),
        ("grounded", ["red circle"], "OBJECT@BOX"),
        ("vqa", ["x.png"], "IMAGE QUESTION"),
        ("paint", ["x"], "unknown kind"),
    ],
)
def test_bad_arguments_name_what_is_expected(kind: str, args: list[str], message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        build_request(kind, args, dict(NO_OPTIONS), "detailed", 1, NO_EXTRA)
