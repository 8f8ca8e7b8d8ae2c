"""`interp-sae inspect` and `interp-sae ablate` end to end on the tiny store and model."""

import json

import pytest
from typer.testing import CliRunner

import dictionaries as D
from interp_sae.cli import app


@pytest.mark.slow
def test_inspect_then_ablate(tiny_store, vaease_folder, tiny_model_folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "inspect"
    result = runner.invoke(
        app,
        [
            "inspect",
            str(tiny_store.root),
            str(vaease_folder),
            "--out",
            str(out),
            "--model",
            str(tiny_model_folder),
            "--top-k",
            "3",
            "--window",
            "2",
            "--rank-by",
            "one_minus_sigma",
            "--ablate",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    inspected = json.loads((out / "inspection.json").read_text())
    assert inspected["config"]["rank_by"] == "one_minus_sigma" and inspected["features"][2]["ablation"]
    assert (out / "report.html").is_file() and "fraction of loss recovered" in result.output

    saved = tmp_path / "ablation.json"
    result = runner.invoke(
        app,
        [
            "ablate",
            str(vaease_folder),
            "--feature",
            "2",
            "--feature",
            "5",
            "--text",
            "The quick brown fox.",
            "--top-contexts",
            "--inspection",
            str(out),
            "--store",
            str(tiny_store.root),
            "--model",
            str(tiny_model_folder),
            "--mode",
            "mean",
            "--out",
            str(saved),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    ablation = json.loads(saved.read_text())
    assert ablation["features"] == [2, 5] and len(ablation["sequences"]) == 1 + 2 * 3


def test_inspect_refuses_a_dictionary_of_another_width(tiny_store, tmp_path):
    wide = D.save_dictionary(D.create(D.make_config("sae_l1", d=48, n_latents=8), seed=0), tmp_path / "wide")
    result = CliRunner().invoke(
        app, ["inspect", str(tiny_store.root), str(wide), "--out", str(tmp_path / "o"), "--no-model"]
    )
    assert result.exit_code == 2
    assert "d=48" in result.output and "d=32" in result.output and "--hook" in result.output
