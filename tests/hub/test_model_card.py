"""The model card's exact text and metadata, and the index entries it is rendered from."""

from __future__ import annotations

import re

import pytest
from huggingface_hub import ModelCard

from interp_sae import model_card

TOPK = {
    "architecture": "topk",
    "hook_name": "blocks.3.hook_resid_post",
    "d": 768,
    "n_features": 24576,
    "model_id": "gpt2",
    "dataset": "NeelNanda/pile-10k",
    "metrics": {"mse": 0.0123456, "l0": 32, "explained_variance": 0.91},
}


def test_summary_reads_each_field_with_a_dash_for_none_later():
    assert model_card.summarize(TOPK, "layer_3") == {"subfolder": "layer_3", **TOPK}
    assert model_card.summarize({}, None) == {
        "subfolder": None, "architecture": None, "hook_name": None, "d": None,
        "n_features": None, "model_id": None, "dataset": None, "metrics": None,
    }  # fmt: skip


def test_metrics_come_from_config_first_then_from_the_metrics_file():
    from_file = {"step": 500, "mse": 0.25}

    assert model_card.summarize({"architecture": "topk"}, "a", from_file)["metrics"] == from_file
    assert model_card.summarize(TOPK, "a", from_file)["metrics"] == TOPK["metrics"]


def test_summary_accepts_alternative_and_nested_keys(monkeypatch):
    config = {"d_in": 512, "latents": 4096, "hook": "blocks.0.hook_mlp_out", "model": {"id": "EleutherAI/pythia-70m"}}
    monkeypatch.setitem(model_card.CONFIG_FIELDS, "model_id", ("model_id", "model.id"))

    summary = model_card.summarize(config, "mlp_0")

    assert (summary["d"], summary["n_features"], summary["hook_name"]) == (512, 4096, "blocks.0.hook_mlp_out")
    assert summary["model_id"] == "EleutherAI/pythia-70m"


def test_card_text():
    entries = [
        model_card.summarize({"architecture": "vaease", "d": 768, "hook_name": "a|b"}, "layer_5"),
        model_card.summarize(TOPK, "layer_3"),
    ]

    assert (
        model_card.render_card("alice/gpt2-saes", entries)
        == """---
base_model: gpt2
datasets:
- NeelNanda/pile-10k
library_name: interp-sae
tags:
- interp-sae
- sparse-autoencoder
- interpretability
- topk
- vaease
---

# alice/gpt2-saes

Sparse dictionaries of language-model activations, trained and shared with interp-sae.
Each dictionary is a folder holding `config.json` and `model.safetensors` (no pickle);
`index.json` lists them.

| Subfolder | Hook | Architecture | d | κ (latents) | Final metrics |
| --- | --- | --- | --- | --- | --- |
| `layer_3` | `blocks.3.hook_resid_post` | topk | 768 | 24576 | mse=0.01235, l0=32, explained_variance=0.91 |
| `layer_5` | `a\\|b` | vaease | 768 | — | — |

## Usage

```python
from interp_sae.hub import download

folder = download("alice/gpt2-saes", subfolder="layer_3")
```
"""
    )


def test_card_metadata_as_the_hub_reads_it():
    entries = [
        model_card.summarize(TOPK, "layer_3"),
        model_card.summarize({**TOPK, "model_id": "gpt2-medium", "dataset": "monology/pile"}, "medium_3"),
        model_card.summarize({"architecture": "vaease"}, "no_model"),
    ]

    metadata = ModelCard(model_card.render_card("alice/mixed", entries)).data.to_dict()

    assert metadata == {
        "library_name": "interp-sae",
        "tags": ["interp-sae", "sparse-autoencoder", "interpretability", "topk", "vaease"],
        "base_model": ["gpt2", "gpt2-medium"],  # in subfolder order
        "datasets": ["NeelNanda/pile-10k", "monology/pile"],
    }


def test_card_for_a_single_dictionary_at_the_root_without_metadata():
    card = model_card.render_card("alice/bare", [model_card.summarize({}, None)])

    assert ModelCard(card).data.to_dict() == {
        "library_name": "interp-sae",
        "tags": ["interp-sae", "sparse-autoencoder", "interpretability"],
    }
    assert "| (root) | — | — | — | — | — |\n" in card
    assert 'folder = download("alice/bare")\n' in card


def test_index_round_trip_and_merge():
    old = [model_card.summarize(TOPK, "layer_3"), model_card.summarize(TOPK, "layer_4")]
    new = [model_card.summarize({**TOPK, "d": 1}, "layer_4"), model_card.summarize(TOPK, "layer_10")]

    merged = model_card.merge_entries(model_card.index_entries(model_card.build_index(old)), new)
    index = model_card.build_index(merged)

    assert [(e["subfolder"], e["d"]) for e in index["dictionaries"]] == [
        ("layer_3", 768),
        ("layer_4", 1),
        ("layer_10", 768),
    ]
    assert model_card.index_entries(index) == index["dictionaries"]


@pytest.mark.parametrize(
    ("index", "error"),
    [
        ({"dictionaries": []}, "not an interp-sae index"),
        (
            {"library_name": "interp-sae", "index_version": 2, "dictionaries": []},
            "index version 2 (this version reads 1)",
        ),
    ],
)
def test_index_from_elsewhere_or_a_newer_version_is_refused(index, error):
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        model_card.index_entries(index)
