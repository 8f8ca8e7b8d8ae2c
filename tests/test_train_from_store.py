import os
import subprocess
import sys

import pytest

import dictionaries as D
from activation_cache import ActivationStore, HarvestConfig, Split, harvest
from interp_sae.train_from_store import (
    DataConfig,
    TrainSetupError,
    dictionary_configs,
    parse_overrides,
    train_from_store,
)

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_lm, text_corpus):
    out = tmp_path_factory.mktemp("train-store")
    harvest(
        HarvestConfig(
            out=str(out),
            model="tiny-pythia",
            hooks=[HOOK],
            dataset=str(text_corpus),
            tokens=100_000,
            context_length=16,
            shard_tokens=256,
            batch_size=8,
            device="cpu",
        ),
        model=tiny_lm,
        progress=False,
    )
    return out


def test_overrides_and_names_of_a_sweep():
    assert parse_overrides(["sae_topk.k=4", "wsae.estimator=kurtosis", "vae.init_log_gamma=-0.5"]) == {
        "sae_topk": {"k": 4},
        "wsae": {"estimator": "kurtosis"},
        "vae": {"init_log_gamma": -0.5},
    }
    configs = dictionary_configs(["sae_topk", "vaease"], [8, 16], d=32, overrides={"sae_topk": {"k": 4}})
    assert sorted(configs) == ["sae_topk-16", "sae_topk-8", "vaease-16", "vaease-8"]
    assert configs["sae_topk-8"].k == 4 and configs["vaease-16"].n_latents == 16
    with pytest.raises(TrainSetupError, match="expected ARCH.FIELD=VALUE"):
        parse_overrides(["k=4"])
    with pytest.raises(TrainSetupError, match=r"unknown architecture\(s\) \['sae_l2'\]"):
        dictionary_configs(["sae_l2"], [8], d=32)
    with pytest.raises(TrainSetupError, match=r"--set names \['wsae'\], which this run does not train"):
        dictionary_configs(["sae_l1"], [8], d=32, overrides={"wsae": {"alpha": 0.5}})


def test_dictionaries_train_on_the_store_and_remember_their_data(store, tmp_path):
    configs = dictionary_configs(["sae_topk", "vaease"], [16], d=32, overrides={"sae_topk": {"k": 4}})
    result = train_from_store(
        store,
        configs,
        tmp_path,
        D.TrainConfig(epochs=2, lr=1e-2, device="cpu", progress=False),
        DataConfig(batch_size=64, split=Split(0.2)),
    )
    assert set(result.metrics) == {"sae_topk", "vaease"}
    assert result.metrics["sae_topk"]["split"] == "held_out" and result.metrics["sae_topk"]["l0_mean"] == 4
    loaded = D.load_dictionary(tmp_path / "vaease")
    assert loaded.metadata["hook_name"] == HOOK and loaded.metadata["context_length"] == 16
    assert loaded.metadata["model_name"] == "tiny-pythia" and loaded.metadata["split"]["val_fraction"] == 0.2
    assert loaded.metadata["store"] == {"path": str(store.resolve()), "fingerprint": ActivationStore(store).fingerprint}
    assert loaded.metadata["input_normalization"] == {"kind": "none", "input_scale": 1.0}
    assert loaded.metadata["metrics"]["fvu_deterministic"] == pytest.approx(
        result.metrics["vaease"]["fvu_deterministic"]
    )
    assert (tmp_path / "ad_re_curves.png").stat().st_size > 0


def test_a_dictionary_of_another_width_is_refused_naming_both(store, tmp_path):
    with pytest.raises(
        TrainSetupError, match=r"takes d=48 inputs but blocks\.1\.hook_resid_post .* has d=32; build it with d=32"
    ):
        train_from_store(store, {"x": D.make_config("sae_l1", d=48, n_latents=8)}, tmp_path, D.TrainConfig(epochs=1))


def test_train_cli_explains_itself_and_its_errors(store, tmp_path):
    cli = [sys.executable, "-m", "interp_sae.cli", "train"]
    wide = {**os.environ, "COLUMNS": "200"}  # rich wraps and elides option names in narrow terminals
    help_text = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=wide).stdout
    for option in (
        "--arch",
        "--latents",
        "--set",
        "--epochs",
        "--lr",
        "--schedule",
        "--precision",
        "--normalize-input",
    ):
        assert option in help_text
    wrong = subprocess.run(
        [*cli, str(store), "--out", str(tmp_path), "--hook", "blocks.0.hook_out"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "hook 'blocks.0.hook_out' is not in this store" in wrong.stderr
