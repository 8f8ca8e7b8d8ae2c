"""Save/load round trips and the loader's errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import dictionaries as D

CONFIGS = {
    "vaease": {},
    "vae": {"encoder": "mlp", "encoder_layers": 2},
    "sae_l1": {},
    "sae_log": {},
    "sae_topk": {"k": 3},
    "wsae": {"encoder": "topk", "k": 3, "estimator": "kurtosis"},
    "topk_aux": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka": {"k": 3, "prefixes": [4]},
    "jumprelu": {},
    "gated": {},
}


def test_every_architecture_has_a_round_trip_case():
    assert set(CONFIGS) == set(D.REGISTRY)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_round_trip_reproduces_outputs_exactly(arch, tmp_path):
    model = D.create(D.make_config(arch, d=6, n_latents=10, **CONFIGS[arch]), seed=1)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)) * 3
    model.input_scale.fill_(0.37)
    model.prepare(x)
    for buffer in model.buffers():  # non-trivial buffers must survive too
        if buffer.dtype == torch.long:
            buffer.copy_(torch.arange(buffer.numel()))
    D.save_dictionary(model, tmp_path / "dict")
    loaded = D.load_dictionary(tmp_path / "dict")
    assert type(loaded) is type(model) and loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.feature_directions, model.feature_directions)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(loaded.loss(x, g1).values(), model.loss(x, g2).values()))


def test_config_json_names_version_and_architecture(tmp_path):
    D.save_dictionary(D.create(D.make_config("vaease", d=4, n_latents=3)), tmp_path)
    header = json.loads((tmp_path / "config.json").read_text())
    assert header["format_version"] == D.FORMAT_VERSION and header["architecture"] == "vaease"
    assert header["config"]["n_latents"] == 3


@pytest.fixture
def saved(tmp_path):
    D.save_dictionary(D.create(D.make_config("sae_l1", d=4, n_latents=3)), tmp_path)
    return tmp_path


def edit_header(folder, **changes):
    header = json.loads((folder / "config.json").read_text())
    header.update(changes)
    (folder / "config.json").write_text(json.dumps(header))


def test_unknown_format_version_is_refused(saved):
    edit_header(saved, format_version=99)
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        D.load_dictionary(saved)


def test_unknown_architecture_is_refused(saved):
    edit_header(saved, architecture="mystery")
    with pytest.raises(ValueError, match="unknown architecture 'mystery'"):
        D.load_dictionary(saved)


def test_unknown_config_field_is_refused(saved):
    edit_header(saved, config={"d": 4, "n_latents": 3, "colour": "red"})
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        D.load_dictionary(saved)


def test_shape_mismatch_is_refused(saved):
    edit_header(saved, config={"d": 4, "n_latents": 5})
    with pytest.raises(
        ValueError, match=r"decoder.weight has shape \(4, 3\) but the config \(d=4, n_latents=5\) needs \(4, 5\)"
    ):
        D.load_dictionary(saved)


def test_missing_tensor_is_refused(saved):
    tensors = load_file(saved / "model.safetensors")
    del tensors["decoder.bias"]
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['decoder.bias'\]"):
        D.load_dictionary(saved)


def test_missing_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        D.load_dictionary(tmp_path / "nothing")


def test_provenance_metadata_is_saved_and_reloaded(tmp_path):
    model = D.create(D.make_config("sae_l1", d=4, n_latents=8), seed=0)
    D.save_dictionary(model, tmp_path, metadata={"hook_name": "blocks.3.hook_resid_post", "context_length": 128})
    assert json.loads((tmp_path / "config.json").read_text())["metadata"] == {
        "hook_name": "blocks.3.hook_resid_post",
        "context_length": 128,
    }
    assert D.load_dictionary(tmp_path).metadata == {"hook_name": "blocks.3.hook_resid_post", "context_length": 128}
