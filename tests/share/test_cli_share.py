"""`interp-sae push | pull | export-saelens | import-saelens`, run through the real app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import dictionaries
from interp_sae.cli import app

from .conftest import N_LATENTS, inputs, make_model

OPTIONS = {
    "push": ["--private", "--revision", "--message", "--token"],
    "pull": ["--subfolder", "--revision", "--out", "--token"],
    "export-saelens": ["--inspection", "--hook-name", "--model-name", "--dataset-path", "--context-size"],
    "import-saelens": [],
}


def run(*args: str, color: bool = False):
    return CliRunner().invoke(app, [str(arg) for arg in args], color=color)


@pytest.mark.parametrize("command", OPTIONS)
def test_help_explains_every_option(command):
    result = run(command, "--help")

    assert result.exit_code == 0, result.output
    for option in OPTIONS[command]:
        [line] = [line for line in result.stdout.splitlines() if f" {option} " in line]
        assert len(line.split(option, 1)[1].strip(" │")) > 10, f"{option} has no help text"  # type and explanation


def test_push_then_pull_into_a_folder(online, tmp_path):
    models = {"layer_0": make_model("sae_l1", 0.37, seed=0), "layer_1": make_model("topk_aux", 0.37, seed=1)}
    for name, model in models.items():
        dictionaries.save_dictionary(model, tmp_path / "run" / name)

    pushed = run(
        "push", "alice/sweep", tmp_path / "run" / "layer_0", tmp_path / "run" / "layer_1", "--message", "Two layers"
    )
    pulled = run("pull", "alice/sweep", "--subfolder", "layer_1", "--out", tmp_path / "pulled")

    assert pushed.exit_code == 0, pushed.output
    repo = online.repos["alice/sweep"]
    assert pushed.stdout == f"{online.endpoint}/alice/sweep/commit/{repo.refs['main']}\n"
    assert {"layer_0/model.safetensors", "layer_1/model.safetensors"} <= repo.commits[repo.refs["main"]].keys()
    assert pulled.exit_code == 0, pulled.output
    assert (pulled.stdout, pulled.stderr) == (f"{tmp_path / 'pulled'}\n", f"topk_aux: d=6, κ={N_LATENTS}\n")
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == ["config.json", "model.safetensors"]
    original = load_file(tmp_path / "run" / "layer_1" / "model.safetensors")
    assert all(torch.equal(load_file(tmp_path / "pulled" / "model.safetensors")[k], v) for k, v in original.items())


def test_pull_without_out_prints_the_cached_folder(online, tmp_path):
    dictionaries.save_dictionary(make_model("sae_l1", 0.37), tmp_path / "sae")
    assert run("push", "alice/sae", tmp_path / "sae", "--private").exit_code == 0

    pulled = run("pull", "alice/sae")

    assert online.repos["alice/sae"].private
    folder = Path(pulled.stdout.strip())
    assert folder.parent.parent.name == "models--alice--sae" and (folder / "model.safetensors").is_file()


def test_export_with_an_inspection_then_import(tmp_path):
    model = make_model("sae_topk", 0.37)
    dictionaries.save_dictionary(model, tmp_path / "sae")
    frequency = [i / N_LATENTS for i in range(N_LATENTS)]
    inspection = {"schema_version": 1, "hook": "blocks.2.hook_resid_post", "model": "EleutherAI/pythia-70m",
                  "features": [{"feature": j, "frequency": f} for j, f in enumerate(frequency)]}  # fmt: skip
    (tmp_path / "inspection").mkdir()
    (tmp_path / "inspection" / "inspection.json").write_text(json.dumps(inspection))

    exported = run(
        "export-saelens",
        tmp_path / "sae",
        tmp_path / "sl",
        "--inspection",
        tmp_path / "inspection",
        "--context-size",
        "128",
    )
    imported = run("import-saelens", tmp_path / "sl", tmp_path / "back")

    assert (exported.exit_code, exported.stdout) == (0, f"{tmp_path / 'sl'}\n"), exported.output
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"] == {
        "sae_lens_version": "6.0.0", "hook_name": "blocks.2.hook_resid_post", "model_name": "EleutherAI/pythia-70m",
        "context_size": 128, "interp_sae_architecture": "sae_topk",
    }  # fmt: skip
    sparsity = load_file(tmp_path / "sl" / "sparsity.safetensors")["sparsity"]
    assert torch.equal(sparsity, torch.log10(torch.tensor(frequency, dtype=torch.float64) + 1e-10).float())
    assert (imported.exit_code, imported.stdout) == (0, f"{tmp_path / 'back'}\n"), imported.output
    back, x = dictionaries.load_dictionary(tmp_path / "back"), inputs(0.37)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-5)


def test_errors_are_red_on_stderr_with_exit_code_2(tmp_path):
    dictionaries.save_dictionary(make_model("vaease", 1.0), tmp_path / "vaease")

    result = run("export-saelens", tmp_path / "vaease", tmp_path / "sl")
    colored = run("export-saelens", tmp_path / "vaease", tmp_path / "sl", color=True)

    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "error: Cannot export a vaease dictionary to SAELens: VAEase's code is the gated mean"
    )
    assert colored.stderr.startswith("\x1b[31merror: Cannot export a vaease")


def test_push_without_a_token_fails_clearly(online, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    dictionaries.save_dictionary(make_model("sae_l1", 1.0), tmp_path / "sae")

    result = run("push", "alice/sae", tmp_path / "sae")

    assert result.exit_code == 2
    assert (
        result.stderr
        == "error: No Hugging Face token found, and pushing needs one with write access: run `hf auth login` or set HF_TOKEN.\n"
    )
    assert online.repos == {}


def test_pull_refuses_a_folder_that_is_not_empty(hf_home, tmp_path):
    dictionaries.save_dictionary(make_model("sae_l1", 1.0), tmp_path / "sae")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")

    result = run("pull", tmp_path / "sae", "--out", tmp_path / "busy")

    assert (result.exit_code, result.stderr) == (
        2,
        f"error: --out {tmp_path / 'busy'} is not empty: choose a new or empty folder.\n",
    )
