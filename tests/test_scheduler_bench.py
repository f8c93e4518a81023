"""`cm3leon bench serve` end to end on a tiny random checkpoint: every headline key, a proven export, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cm3leon.cli import app


def test_serve_bench_writes_results_summary_and_plot(checkpoint_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "results"
    (out).mkdir()
    (out / "summary.json").write_text(json.dumps({"kept": 1}))
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "serve",
            "--out",
            str(out),
            "--checkpoint",
            str(checkpoint_dir),
            "--preset",
            "quick",
            "--no-compile-decode",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "serve.json").read_text())
    assert record["hf_export_greedy_equal"] is True
    for key in ("engine_speedup_16", "continuous_vs_static_16", "hf_speedup_b1", "hf_speedup_b16"):
        assert record[key] > 0
    assert set(record["sweep"]) == {"ours", "one_at_a_time", "hf"} and set(record["sweep"]["ours"]) == {"1", "4"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == 1 and summary["hf_speedup_b1"] == record["hf_speedup_b1"]
    assert summary["machine"]["cores"] >= 1 and record["parameters"]["jobs"] == 4
    assert (out / "serve.png").stat().st_size > 0
