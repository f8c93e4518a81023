"""The serve benchmark end to end on a tiny random checkpoint: every headline key, a proven export, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cm3leon.bench.serve import ServeBenchConfig, bench_serve, write_serve_extras


def test_serve_bench_results_summary_and_plot(checkpoint_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "summary.json").write_text(json.dumps({"kept": 1}))
    results = bench_serve(checkpoint_dir, ServeBenchConfig.preset("quick", compile_decode=False))
    plot, summary_path = write_serve_extras(tmp_path, "serve", results)
    assert results["hf_export_greedy_equal"] is True
    for key in ("engine_speedup_16", "continuous_vs_static_16", "hf_speedup_b1", "hf_speedup_b16"):
        assert results[key] > 0
    assert set(results["sweep"]) == {"ours", "one_at_a_time", "hf"} and set(results["sweep"]["ours"]) == {"1", "4"}
    summary = json.loads(summary_path.read_text())
    assert summary["kept"] == 1 and summary["hf_speedup_b1"] == results["hf_speedup_b1"]
    assert summary["machine"]["cores"] >= 1 and results["parameters"]["jobs"] == 4
    assert plot.stat().st_size > 0
