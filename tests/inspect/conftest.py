"""Shared small data for the inspector tests: a harvested tiny store and random dictionaries."""

import pytest

import dictionaries as D
from activation_cache import ActivationStore, HarvestConfig, harvest

HOOK = "blocks.1.hook_resid_post"
N_FEATURES = 64


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_lm, text_corpus):
    out = tmp_path_factory.mktemp("inspect-store")
    config = HarvestConfig(
        out=str(out),
        model="tiny-pythia",
        hooks=[HOOK],
        dataset=str(text_corpus),
        tokens=100_000,
        context_length=32,
        shard_tokens=320,
        batch_size=8,
        store_dtype="float32",
        device="cpu",
    )
    harvest(config, model=tiny_lm, progress=False)
    return ActivationStore(out)


def _saved(tmp_path_factory, architecture: str, seed: int, **fields):
    model = D.create(D.make_config(architecture, d=32, n_latents=N_FEATURES, **fields), seed=seed)
    folder = D.save_dictionary(model, tmp_path_factory.mktemp(architecture))
    return folder


@pytest.fixture(scope="session")
def sae_folder(tmp_path_factory):
    return _saved(tmp_path_factory, "sae_l1", seed=1)


@pytest.fixture(scope="session")
def vaease_folder(tmp_path_factory):
    return _saved(tmp_path_factory, "vaease", seed=2)


@pytest.fixture
def sae(sae_folder):
    return D.load_dictionary(sae_folder)


@pytest.fixture
def vaease(vaease_folder):
    return D.load_dictionary(vaease_folder)


@pytest.fixture(scope="session")
def inspection(tiny_store, sae_folder, tiny_lm):
    """A full inspection (model included) of the random SAE, ablating its first firing feature."""
    from interp_sae.inspector import InspectConfig, inspect

    sae = D.load_dictionary(sae_folder)
    results = inspect(
        tiny_store,
        sae,
        config=InspectConfig(top_k=5, window=4, split="all"),
        lm=tiny_lm,
        dictionary_path=str(sae_folder),
    )
    feature = next(f["feature"] for f in results["features"] if f["top_examples"])
    with_ablation = inspect(
        tiny_store,
        sae,
        config=InspectConfig(top_k=5, window=4, split="all", ablate=[feature]),
        lm=tiny_lm,
        dictionary_path=str(sae_folder),
    )
    return with_ablation, feature
