"""from_pretrained: a local folder or a Hub repo (the local server) to a loaded dictionary, or a clear HubError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import dictionaries
from interp_sae.hub import HubError, from_pretrained, push_to_hub
from interp_sae.saelens import export_saelens

from .conftest import inputs, make_model, pickle_that_runs_code


def assert_same_dictionary(loaded: dictionaries.Dictionary, model: dictionaries.Dictionary) -> None:
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())
    x = inputs(0.37)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x)) and torch.equal(loaded(x), model(x))


def test_from_a_local_folder(hf_home, tmp_path):
    model = make_model("topk_aux", input_scale=0.37)
    dictionaries.save_dictionary(model, tmp_path / "run" / "topk")

    assert_same_dictionary(from_pretrained(tmp_path / "run" / "topk"), model)
    assert_same_dictionary(from_pretrained(str(tmp_path / "run"), subfolder="topk"), model)


def test_push_then_from_pretrained_into_an_empty_cache(online, tmp_path):
    models = {"layer_0": make_model("sae_l1", 0.37, seed=0), "layer_1": make_model("vaease", 0.37, seed=1)}
    for name, model in models.items():
        dictionaries.save_dictionary(model, tmp_path / "sweep" / name)
    push_to_hub(tmp_path / "sweep", "alice/sweep")
    assert not Path(constants.HF_HUB_CACHE).exists()

    loaded = from_pretrained("alice/sweep", subfolder="layer_1")

    assert_same_dictionary(loaded, models["layer_1"])
    assert Path(constants.HF_HUB_CACHE, "models--alice--sweep").is_dir()  # it came through the cache


def test_a_dictionary_from_a_newer_format_version_is_refused(online, tmp_path):
    dictionaries.save_dictionary(make_model("sae_l1", 1.0), tmp_path / "sae")
    config_path = tmp_path / "sae" / "config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "format_version": dictionaries.FORMAT_VERSION + 1})
    )
    push_to_hub(tmp_path / "sae", "alice/future")

    with pytest.raises(
        HubError,
        match=f"^Cannot load the dictionary in .*format_version {dictionaries.FORMAT_VERSION + 1} is not supported",
    ):
        from_pretrained("alice/future")


def test_pickled_weights_are_refused_and_never_unpickled(hf_home, tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "sae"
    dictionaries.save_dictionary(make_model("sae_l1", 1.0), folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.bin").write_bytes(pickle_that_runs_code(marker))

    with pytest.raises(HubError) as missing:
        from_pretrained(folder)
    (folder / "model.safetensors").write_bytes((folder / "model.bin").read_bytes())  # a pickle under the expected name
    with pytest.raises(
        HubError, match=f"^{re.escape(str(folder / 'model.safetensors'))} is not a valid safetensors file"
    ):
        from_pretrained(folder)

    assert str(missing.value) == (
        f"{folder} is not a dictionary folder: model.safetensors is missing; found ['model.bin']: pickle files, "
        "which interp-sae never loads (unpickling can run code). Convert them to safetensors."
    )
    assert not marker.exists()


def test_a_saelens_folder_gets_a_hint_to_import_it(hf_home, tmp_path):
    dictionaries.save_dictionary(make_model("sae_l1", 1.0), tmp_path / "sae")
    export_saelens(tmp_path / "sae", tmp_path / "saelens")

    with pytest.raises(HubError) as caught:
        from_pretrained(tmp_path / "saelens")

    assert str(caught.value) == (
        f"{tmp_path / 'saelens'} is not a dictionary folder: config.json is missing; it holds SAELens's layout "
        "(cfg.json): convert it with `interp-sae import-saelens`."
    )
