"""`cm3leon jobs submit KIND ...`: one subcommand per kind of the proto, each building its request (no stack)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from cm3leon_client.api import jobs_pb2
from cm3leon_client.cli.jobs import submit_app
from cm3leon_client.cli.kinds import build_request, kind_fields


@pytest.fixture()
def png(tmp_path: Path) -> str:
    from PIL import Image

    path = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "white").save(path)
    return str(path)


def submit_commands() -> dict[str, typer.core.TyperCommand]:
    return typer.main.get_command(submit_app).commands  # type: ignore[attr-defined]


def flags(kind: str) -> set[str]:
    return {flag for param in submit_commands()[kind].params for flag in param.opts}


def test_every_kind_of_the_proto_has_its_subcommand() -> None:
    kinds = [field.name for field in jobs_pb2.JobRequest.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert [f.name for f in kind_fields()] == kinds
    assert {k.replace("_", "-") for k in kinds} <= set(submit_commands())
    assert {"--question", "--explain", "--seed", "--target", "--json", "--wait"} <= flags("visual-question")
    assert "--question" not in flags("text-to-image") and "--num-images" in flags("text-to-image")
    assert not flags("segmentation") & {"--seed", "--temperature"}, "segmentation has no sampling"
    assert {"--style"} <= flags("caption") and {"--regions"} <= flags("infill")


def test_every_kind_builds_its_oneof(png: str) -> None:
    cases = {
        "text_to_image": {"prompt": "a large red circle", "num_images": 2},
        "caption": {"image": png, "style": "short"},
        "visual_question": {"image": png, "question": "What colour is the circle?", "explain": True},
        "edit": {"image": png, "instruction": "make the circle blue", "source_copy_bias": 1.5},
        "infill": {"image": png, "regions": ["0.33,0.33,0.66,0.66", "0,0,0.33,0.33"], "seed": 7},
        "segmentation": {"image": png},
        "structure_guided": {"segmentation_map": png, "caption": "a small red circle on white"},
        "grounded_generation": {
            "objects": ["large red circle@0,0,0.33,0.33", "small blue star@0.66,0.66,1,1"],
            "prompt": "on black",
        },
        "text_rendering": {"text": "AB in blue", "guidance_plausibility": 0.25},
    }
    assert set(cases) == {f.name for f in kind_fields()}
    for kind, values in cases.items():
        assert build_request(kind, values).WhichOneof("kind") == kind
    infill = build_request("infill", cases["infill"]).infill
    # Boxes travel as float32: compare approximately.
    assert [(b.x0, b.y1) for b in infill.regions] == [pytest.approx((0.33, 0.66)), pytest.approx((0.0, 0.33))]
    assert infill.sampling.seed == 7 and infill.image.data.startswith(b"\x89PNG")
    grounded = build_request("grounded_generation", cases["grounded_generation"]).grounded_generation
    assert [o.description for o in grounded.objects] == ["large red circle", "small blue star"]
    assert grounded.prompt == "on black" and grounded.objects[1].box.x1 == 1.0
    assert build_request("caption", cases["caption"]).caption.style == jobs_pb2.CAPTION_STYLE_SHORT
    edit = build_request("edit", cases["edit"]).edit
    assert edit.source_copy_bias == 1.5 and not edit.HasField("text_guidance_scale")
    assert not build_request("edit", cases["edit"]).plain
    assert build_request("edit", {**cases["edit"], "plain": True}).plain, "--plain: the model's generic decoding"
    key = build_request("caption", {"image": "key:inputs/abc.png"}).caption.image
    assert key.object_key == "inputs/abc.png"


def test_sampling_is_sent_only_when_given() -> None:
    unset = build_request("text_to_image", {"prompt": "a red circle"}).text_to_image.sampling
    assert not unset.HasField("guidance_plausibility") and not unset.HasField("seed"), "unset: the model's default"
    sampling = build_request("text_rendering", {"text": "AB", "guidance_plausibility": 0.25}).text_rendering.sampling
    assert sampling.HasField("guidance_plausibility") and sampling.guidance_plausibility == 0.25


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        ("infill", {"image": "key:x.png", "regions": ["1,2,3"]}, "is not X0,Y0,X1,Y1"),
        ("infill", {"image": "key:x.png", "regions": ["a,b,c,d"]}, "is not X0,Y0,X1,Y1"),
        ("grounded_generation", {"objects": ["red circle"]}, "DESCRIPTION@X0,Y0,X1,Y1"),
    ],
)
def test_bad_arguments_name_what_is_expected(kind: str, values: dict, message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        build_request(kind, values)
