"""Export to SAELens's layout: exact files, folded weights, SAELens's forward pass, round trips, refusals."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import dictionaries
from interp_sae.saelens import SAELensError, export_saelens, import_saelens

from .conftest import EXPORTABLE, N_LATENTS, D, K, inputs, make_model, saelens_decode, saelens_encode, saelens_modern

REFUSED = {"vaease", "vae"}


def export(tmp_path, model: dictionaries.Dictionary, **kwargs) -> tuple[dict, dict[str, torch.Tensor]]:
    dictionaries.save_dictionary(model, tmp_path / "ours")
    out = export_saelens(tmp_path / "ours", tmp_path / "saelens", **kwargs)
    return json.loads((out / "cfg.json").read_text()), load_file(out / "sae_weights.safetensors")


def test_every_architecture_is_either_exported_or_refused():
    exported = {spec[0] for spec in EXPORTABLE.values()} | {spec[0] for spec in MODERN_EXPORTS.values()}
    assert exported | REFUSED == set(dictionaries.REGISTRY)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_layout_is_exactly_what_saelens_loads(name, tmp_path):
    model = make_model(name, input_scale=0.37)
    _, _, saelens_architecture, subtracts_b_dec, _ = EXPORTABLE[name]

    cfg, tensors = export(tmp_path, model)

    assert sorted(p.name for p in (tmp_path / "saelens").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert {name: tuple(t.shape) for name, t in tensors.items()} == {
        "W_enc": (D, N_LATENTS), "b_enc": (N_LATENTS,), "W_dec": (N_LATENTS, D), "b_dec": (D,),
    }  # fmt: skip
    assert all(t.dtype == torch.float32 for t in tensors.values())
    topk = {"k": K, "rescale_acts_by_decoder_norm": False} if saelens_architecture == "topk" else {}
    assert cfg == {
        "d_in": D, "d_sae": N_LATENTS, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": subtracts_b_dec,
        "normalize_activations": "none", "reshape_activations": "none", "architecture": saelens_architecture, **topk,
        "metadata": {"sae_lens_version": "6.0.0", "interp_sae_architecture": model.architecture},
    }  # fmt: skip


def test_input_scale_is_folded_into_the_weights(tmp_path):
    model = make_model("topk_aux", input_scale=0.37)

    _, tensors = export(tmp_path, model)

    s = model.input_scale
    assert torch.equal(tensors["W_enc"], (model.encoder.weight * s).T)
    assert torch.equal(tensors["b_enc"], model.encoder.bias)
    assert torch.equal(tensors["W_dec"], (model.decoder.weight / s).T)
    assert torch.equal(tensors["b_dec"], model.decoder.bias / s)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_saelens_forward_on_the_exported_tensors_gives_our_outputs(name, tmp_path):
    model = make_model(name, input_scale=0.37)
    x = inputs(0.37)

    cfg, tensors = export(tmp_path, model)

    with torch.no_grad():
        features, recon = model.encode(x), model(x)
    theirs = saelens_encode(cfg, tensors, x)
    assert torch.equal(theirs != 0, features != 0)  # the same features fire
    torch.testing.assert_close(theirs, features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saelens_decode(cfg, tensors, theirs), recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_export_then_import_reproduces_our_outputs_exactly(name, tmp_path):
    # A power-of-two scale folds without rounding, so the outputs must agree bit for bit.
    model = make_model(name, input_scale=0.25)
    x = inputs(0.25)
    export(tmp_path, model)

    back = dictionaries.load_dictionary(import_saelens(tmp_path / "saelens", tmp_path / "back"))

    assert back.architecture == EXPORTABLE[name][4]
    assert float(back.input_scale) == 1.0
    with torch.no_grad():
        assert torch.equal(back.encode(x), model.encode(x))
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize(
    ("architecture", "reason"),
    [
        ("vaease", "VAEase's code is the gated mean (1 − σ) ⊙ μ, and the gate σ comes from the encoder's variance "
                   "head, which SAELens has no slot for."),
        ("vae", "the VAE's code is the posterior mean μ of a swish (SiLU) or multi-layer encoder, and SAELens's "
                "SAEs encode with one linear layer and ReLU, TopK or JumpReLU."),
    ],
)  # fmt: skip
def test_variational_dictionaries_are_refused_with_the_reason(architecture, reason, tmp_path):
    dictionaries.save_dictionary(
        dictionaries.create(dictionaries.make_config(architecture, d=D, n_latents=N_LATENTS)), tmp_path / "v"
    )

    with pytest.raises(SAELensError) as caught:
        export_saelens(tmp_path / "v", tmp_path / "out")

    assert str(caught.value) == f"Cannot export a {architecture} dictionary to SAELens: {reason}"
    assert not (tmp_path / "out").exists()


def test_sparsity_file_holds_log10_of_the_firing_frequency(tmp_path):
    frequency = torch.linspace(0, 1, N_LATENTS, dtype=torch.float64)

    export(tmp_path, make_model("sae_l1", 1.0), firing_frequency=frequency)

    sparsity = load_file(tmp_path / "saelens" / "sparsity.safetensors")
    assert list(sparsity) == ["sparsity"]
    assert sparsity["sparsity"].dtype == torch.float32 and sparsity["sparsity"].shape == (N_LATENTS,)
    assert torch.equal(sparsity["sparsity"], torch.log10(frequency + 1e-10).float())
    assert sparsity["sparsity"][0] == -10  # a dead feature

    export_saelens(tmp_path / "ours", tmp_path / "saelens")  # again, without frequencies: no stale file left
    assert not (tmp_path / "saelens" / "sparsity.safetensors").exists()


@pytest.mark.parametrize(
    ("frequency", "message"),
    [
        (
            torch.zeros(N_LATENTS + 1),
            f"firing_frequency must have shape ({N_LATENTS},), one per feature, got ({N_LATENTS + 1},).",
        ),
        (torch.full((N_LATENTS,), 1.5), "firing_frequency must hold fractions of tokens, each in [0, 1] (and no NaN)."),
        (
            torch.full((N_LATENTS,), float("nan")),
            "firing_frequency must hold fractions of tokens, each in [0, 1] (and no NaN).",
        ),
    ],
)
def test_firing_frequencies_are_checked(frequency, message, tmp_path):
    with pytest.raises(SAELensError, match=f"^{re.escape(message)}$"):
        export(tmp_path, make_model("sae_l1", 1.0), firing_frequency=frequency)


def test_metadata_comes_from_the_config_and_given_values_win(tmp_path):
    dictionaries.save_dictionary(make_model("sae_topk", 1.0), tmp_path / "ours")
    config_path = tmp_path / "ours" / "config.json"
    provenance = {"hook_name": "blocks.3.hook_resid_post", "model_name": "EleutherAI/pythia-70m-deduped",
                  "dataset": "NeelNanda/pile-10k", "context_length": 128, "prepend_bos": True}  # fmt: skip
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "metadata": provenance}))

    export_saelens(
        tmp_path / "ours", tmp_path / "saelens", metadata={"hook_name": "blocks.4.hook_resid_post", "model_name": None}
    )

    assert json.loads((tmp_path / "saelens" / "cfg.json").read_text())["metadata"] == {
        "sae_lens_version": "6.0.0", "hook_name": "blocks.4.hook_resid_post", "model_name": "EleutherAI/pythia-70m-deduped",
        "dataset_path": "NeelNanda/pile-10k", "context_size": 128, "prepend_bos": True, "interp_sae_architecture": "sae_topk",
    }  # fmt: skip


# --- BatchTopK, Matryoshka and JumpReLU export as SAELens "jumprelu", Gated as "gated" ---------------
# name -> (architecture, config fields, SAELens architecture, architecture it imports back as)
MODERN_EXPORTS = {
    "batchtopk": ("batchtopk", {"k": K}, "jumprelu", "jumprelu"),
    "matryoshka": ("matryoshka", {"k": K, "prefixes": [4]}, "jumprelu", "jumprelu"),
    "jumprelu": ("jumprelu", {}, "jumprelu", "jumprelu"),
    "gated": ("gated", {}, "gated", "gated"),
}


def make_modern(name: str, input_scale: float, seed: int = 0) -> dictionaries.Dictionary:
    """A random dictionary with non-zero biases and thresholds, so that every tensor shows."""
    architecture, fields = MODERN_EXPORTS[name][:2]
    model = dictionaries.create(dictionaries.make_config(architecture, d=D, n_latents=N_LATENTS, **fields), seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        model.decoder.bias.copy_(torch.randn(D, generator=generator))
        model.input_scale.fill_(input_scale)
        if architecture in ("batchtopk", "matryoshka"):
            model.threshold.fill_(0.5)
        elif architecture == "jumprelu":
            model.threshold_parameter.copy_(torch.rand(N_LATENTS, generator=generator))
        else:
            for parameter in (model.b_gate, model.b_mag, model.r_mag):
                parameter.copy_(torch.randn(N_LATENTS, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("name", MODERN_EXPORTS)
def test_modern_layout_is_exactly_what_saelens_loads(name, tmp_path):
    model = make_modern(name, input_scale=0.37)
    saelens_architecture = MODERN_EXPORTS[name][2]

    cfg, tensors = export(tmp_path, model)

    bias_names = ["b_gate", "b_mag", "r_mag"] if saelens_architecture == "gated" else ["b_enc", "threshold"]
    assert sorted(tensors) == sorted(["W_enc", "W_dec", "b_dec", *bias_names])
    assert tensors["W_enc"].shape == (D, N_LATENTS) and tensors["W_dec"].shape == (N_LATENTS, D)
    assert tensors["b_dec"].shape == (D,) and all(tensors[key].shape == (N_LATENTS,) for key in bias_names)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert cfg == {
        "d_in": D, "d_sae": N_LATENTS, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none", "architecture": saelens_architecture,
        "metadata": {"sae_lens_version": "6.0.0", "interp_sae_architecture": model.architecture},
    }  # fmt: skip
    if name in ("batchtopk", "matryoshka"):  # the inference threshold for every latent
        assert torch.equal(tensors["threshold"], torch.full((N_LATENTS,), 0.5))


@pytest.mark.parametrize("name", MODERN_EXPORTS)
def test_saelens_forward_on_modern_exports_gives_our_outputs(name, tmp_path):
    model = make_modern(name, input_scale=0.37)
    x = inputs(0.37)

    cfg, tensors = export(tmp_path, model)

    with torch.no_grad():
        features, recon = model.encode(x), model(x)
    theirs, their_recon = saelens_modern(cfg, tensors, x)
    assert bool((features != 0).any()) and not bool((features != 0).all())
    assert torch.equal(theirs != 0, features != 0)
    torch.testing.assert_close(theirs, features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(their_recon, recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODERN_EXPORTS)
def test_modern_export_then_import_reproduces_our_outputs(name, tmp_path):
    model = make_modern(name, input_scale=0.25)  # a power of two folds without rounding
    x = inputs(0.25)
    export(tmp_path, model)

    back = dictionaries.load_dictionary(import_saelens(tmp_path / "saelens", tmp_path / "back"))

    assert back.architecture == MODERN_EXPORTS[name][3] and float(back.input_scale) == 1.0
    with torch.no_grad():
        assert torch.equal(back.encode(x) != 0, model.encode(x) != 0)
        torch.testing.assert_close(back.encode(x), model.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
