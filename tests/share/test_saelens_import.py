"""Import from SAELens's layout: what SAELens computes is what the imported dictionary computes,
provenance is kept, and anything that would not import exactly is refused without unpickling."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

import dictionaries
from interp_sae import model_card
from interp_sae.saelens import SAELensError, import_saelens

from .conftest import N_LATENTS, D, K, pickle_that_runs_code, saelens_decode, saelens_encode, saelens_modern

METADATA = {
    "sae_lens_version": "6.18.0", "model_name": "pythia-70m-deduped", "hook_name": "blocks.3.hook_resid_post",
    "hook_head_index": None, "context_size": 128, "prepend_bos": True, "dataset_path": "monology/pile-uncopyrighted",
}  # fmt: skip
STANDARD = {
    "d_in": D, "d_sae": N_LATENTS, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
    "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard", "metadata": METADATA,
}  # fmt: skip
TOPK = {**STANDARD, "architecture": "topk", "k": K, "rescale_acts_by_decoder_norm": False}


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (D, N_LATENTS), "b_enc": (N_LATENTS,), "W_dec": (N_LATENTS, D), "b_dec": (D,)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def write_saelens(folder, cfg: dict, tensors: dict[str, torch.Tensor]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, folder / "sae_weights.safetensors")
    return folder


@pytest.mark.parametrize(
    ("cfg", "imported_as"),
    [
        (STANDARD, "sae_l1"),  # b_dec subtracted: folded into b_enc
        ({**STANDARD, "apply_b_dec_to_input": False}, "sae_l1"),
        (TOPK, "topk_aux"),  # b_dec subtracted, as topk_aux does
        ({**TOPK, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True}, "sae_topk"),
    ],
    ids=["standard", "standard-no-b_dec", "topk", "topk-rescaled"],
)
def test_imported_dictionary_computes_what_saelens_computes(cfg, imported_as, tmp_path):
    tensors = random_weights()
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))

    model = dictionaries.load_dictionary(
        import_saelens(write_saelens(tmp_path / "sl", cfg, tensors), tmp_path / "ours")
    )

    assert model.architecture == imported_as and model.config.d == D and model.config.n_latents == N_LATENTS
    with torch.no_grad():
        features = model.encode(x)
        expected = saelens_encode(cfg, tensors, x)
        assert torch.equal(features != 0, expected != 0)
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(features), saelens_decode(cfg, tensors, expected), rtol=1e-5, atol=1e-5)


def test_provenance_goes_into_config_metadata_and_the_model_card_reads_it(tmp_path):
    out = import_saelens(write_saelens(tmp_path / "sl", STANDARD, random_weights()), tmp_path / "ours")

    config = json.loads((out / "config.json").read_text())
    assert config["metadata"] == {
        "source": "saelens", "hook_name": "blocks.3.hook_resid_post", "model_name": "pythia-70m-deduped",
        "dataset": "monology/pile-uncopyrighted", "context_length": 128, "prepend_bos": True,
    }  # fmt: skip
    summary = model_card.summarize(config, "layer_3")
    assert (summary["hook_name"], summary["model_id"], summary["dataset"]) == (
        "blocks.3.hook_resid_post", "pythia-70m-deduped", "monology/pile-uncopyrighted"
    )  # fmt: skip


def test_a_pre_6_config_is_read_as_saelens_reads_it(tmp_path):
    old = {
        "d_in": D, "d_sae": N_LATENTS, "dtype": "float32", "hook_point": "blocks.0.hook_resid_pre", "model_name": "gpt2",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}, "normalize_activations": False, "context_size": 64,
    }  # fmt: skip
    tensors = random_weights()
    folder = write_saelens(
        tmp_path / "sl", old, {**tensors, "scaling_factor": torch.ones(N_LATENTS)}
    )  # a legacy all-ones one

    out = import_saelens(folder, tmp_path / "ours")

    model = dictionaries.load_dictionary(out)
    assert model.architecture == "topk_aux" and model.config.k == K  # apply_b_dec_to_input defaulted to true
    assert json.loads((out / "config.json").read_text())["metadata"] == {
        "source": "saelens", "hook_name": "blocks.0.hook_resid_pre", "model_name": "gpt2", "context_length": 64,
    }  # fmt: skip


CFG_ERRORS = [
    ({**STANDARD, "architecture": "transcoder"}, "SAELens architecture 'transcoder' has no interp-sae equivalent (standard, topk, jumprelu and gated import)."),
    ({**STANDARD, "normalize_activations": "expected_average_only_in"},
     "normalize_activations is 'expected_average_only_in'; only 'none' imports, because SAELens keeps the "
     "normalisation factor outside the folder. Fold it into the weights first."),
    ({**STANDARD, "reshape_activations": "hook_z"},
     "reshape_activations 'hook_z' is not supported: interp-sae dictionaries read flat activation vectors."),
    ({**TOPK, "k": N_LATENTS + 1}, f"a topk SAE needs an integer k in [1, d_sae={N_LATENTS}], got {N_LATENTS + 1}."),
    ({key: value for key, value in STANDARD.items() if key != "d_in"}, "d_in must be a positive integer, got None."),
    ({"d_in": D, "d_sae": N_LATENTS, "activation_fn_str": "tanh-relu"},
     "activation function 'tanh-relu' has no interp-sae equivalent (relu or topk)."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"), CFG_ERRORS, ids=["transcoder", "normalized", "hook_z", "k", "d_in", "pre-6-activation"]
)
def test_configs_that_would_not_import_exactly_are_refused(cfg, message, tmp_path):
    folder = write_saelens(tmp_path / "sl", cfg, random_weights())

    with pytest.raises(SAELensError, match=f"^{re.escape(str(folder / 'cfg.json'))}: {re.escape(message)}$"):
        import_saelens(folder, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_weights_that_do_not_match_are_refused(tmp_path):
    tensors = random_weights()
    path = tmp_path / "sl" / "sae_weights.safetensors"
    cases = [
        ({**tensors, "threshold": torch.zeros(N_LATENTS)},
         f"{path} must hold exactly ['W_enc', 'b_enc', 'W_dec', 'b_dec'] (SAELens standard or topk), "
         "got ['W_dec', 'W_enc', 'b_dec', 'b_enc', 'threshold']."),
        ({**tensors, "W_dec": tensors["W_dec"].T.contiguous()},
         f"{path}: W_dec has shape ({D}, {N_LATENTS}), but cfg.json (d_in={D}, d_sae={N_LATENTS}) needs ({N_LATENTS}, {D})."),
        ({**tensors, "scaling_factor": torch.full((N_LATENTS,), 2.0)},
         f"{path}: a fine-tuning scaling_factor other than 1 is not supported."),
    ]  # fmt: skip
    for weights, message in cases:
        write_saelens(tmp_path / "sl", STANDARD, weights)
        with pytest.raises(SAELensError, match=f"^{re.escape(message)}$"):
            import_saelens(tmp_path / "sl", tmp_path / "ours")


def test_damaged_files_are_refused(tmp_path):
    folder = write_saelens(tmp_path / "sl", STANDARD, random_weights())
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])

    with pytest.raises(
        SAELensError,
        match=f"^{re.escape(str(weights))} is not a valid safetensors file .*: it is corrupt or truncated.$",
    ):
        import_saelens(folder, tmp_path / "ours")
    (folder / "cfg.json").write_text("[1, 2]")
    with pytest.raises(
        SAELensError, match=f"^{re.escape(str(folder / 'cfg.json'))} must hold a JSON object, not list.$"
    ):
        import_saelens(folder, tmp_path / "ours")


def test_pickled_weights_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle_that_runs_code(marker)
    folder = tmp_path / "sl"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(STANDARD))
    (folder / "sae_weights.pt").write_bytes(payload)

    with pytest.raises(SAELensError) as missing:
        import_saelens(folder, tmp_path / "ours")
    (folder / "sae_weights.safetensors").write_bytes(payload)  # a pickle under the expected name
    with pytest.raises(SAELensError, match="is not a valid safetensors file"):
        import_saelens(folder, tmp_path / "ours")

    assert str(missing.value) == (
        f"{folder} is not a SAELens folder: sae_weights.safetensors is missing; found ['sae_weights.pt']: pickle files, "
        "which interp-sae never loads (unpickling can run code). Convert them to safetensors."
    )
    assert not marker.exists()


# --- jumprelu (also SAELens's BatchTopK and Matryoshka) and gated --------------------------------------
JUMPRELU = {**STANDARD, "architecture": "jumprelu"}
GATED = {**STANDARD, "architecture": "gated"}


def random_modern_weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = random_weights(seed)
    if architecture == "jumprelu":  # some thresholds ≤ 0, which compute as 0
        return tensors | {"threshold": torch.randn(N_LATENTS, generator=generator).abs() - 0.2}
    del tensors["b_enc"]
    return tensors | {name: torch.randn(N_LATENTS, generator=generator) * 0.5 for name in ("b_gate", "b_mag", "r_mag")}


@pytest.mark.parametrize("cfg", [JUMPRELU, {**JUMPRELU, "apply_b_dec_to_input": False}, GATED,
                                 {**GATED, "apply_b_dec_to_input": False}],
                         ids=["jumprelu", "jumprelu-no-b_dec", "gated", "gated-no-b_dec"])  # fmt: skip
def test_imported_jumprelu_and_gated_compute_what_saelens_computes(cfg, tmp_path):
    tensors = random_modern_weights(cfg["architecture"])
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(1))

    model = dictionaries.load_dictionary(
        import_saelens(write_saelens(tmp_path / "sl", cfg, tensors), tmp_path / "ours")
    )

    assert model.architecture == cfg["architecture"] and model.config.n_latents == N_LATENTS
    with torch.no_grad():
        features = model.encode(x)
        expected, recon = saelens_modern(cfg, tensors, x)
        assert bool((features != 0).any()) and not bool((features != 0).all())
        assert torch.equal(features != 0, expected != 0)
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(features), recon, rtol=1e-5, atol=1e-5)


def test_jumprelu_thresholds_are_kept(tmp_path):
    tensors = random_modern_weights("jumprelu")

    model = dictionaries.load_dictionary(
        import_saelens(write_saelens(tmp_path / "sl", JUMPRELU, tensors), tmp_path / "o")
    )

    assert torch.equal(model.threshold, tensors["threshold"].clamp(min=0))  # ≤ 0 computes as 0
    assert bool((model.threshold == 0).any())


def test_modern_weights_that_do_not_match_are_refused(tmp_path):
    path = tmp_path / "sl" / "sae_weights.safetensors"
    jumprelu, gated = random_modern_weights("jumprelu"), random_modern_weights("gated")
    cases = [
        (JUMPRELU, random_weights(),
         f"{path} must hold exactly ['W_enc', 'b_enc', 'W_dec', 'b_dec', 'threshold'] (SAELens jumprelu), "
         "got ['W_dec', 'W_enc', 'b_dec', 'b_enc']."),
        (GATED, {**gated, "b_enc": jumprelu["b_enc"]},
         f"{path} must hold exactly ['W_enc', 'b_gate', 'b_mag', 'r_mag', 'W_dec', 'b_dec'] (SAELens gated), "
         "got ['W_dec', 'W_enc', 'b_dec', 'b_enc', 'b_gate', 'b_mag', 'r_mag']."),
        (JUMPRELU, {**jumprelu, "threshold": torch.zeros(N_LATENTS + 1)},
         f"{path}: threshold has shape ({N_LATENTS + 1},), but cfg.json (d_in={D}, d_sae={N_LATENTS}) needs ({N_LATENTS},)."),
        (GATED, {**gated, "r_mag": torch.zeros(D)},
         f"{path}: r_mag has shape ({D},), but cfg.json (d_in={D}, d_sae={N_LATENTS}) needs ({N_LATENTS},)."),
    ]  # fmt: skip
    for cfg, weights, message in cases:
        write_saelens(tmp_path / "sl", cfg, weights)
        with pytest.raises(SAELensError, match=f"^{re.escape(message)}$"):
            import_saelens(tmp_path / "sl", tmp_path / "ours")


def test_architectures_without_an_equivalent_are_refused_naming_those_that_import(tmp_path):
    folder = write_saelens(tmp_path / "sl", {**STANDARD, "architecture": "jumprelu_transcoder"}, random_weights())

    message = ("SAELens architecture 'jumprelu_transcoder' has no interp-sae equivalent "
               "(standard, topk, jumprelu and gated import).")  # fmt: skip
    with pytest.raises(SAELensError, match=f"^{re.escape(str(folder / 'cfg.json'))}: {re.escape(message)}$"):
        import_saelens(folder, tmp_path / "ours")
