"""Contract tests for each hand-off: every stage uses the hook, the held-out split and the input
scale that training recorded, without being told twice, and refuses data the dictionary was not
trained on. The commands run as a user runs them (the real CLI, in process), on a tiny model."""

import json

import pytest
import torch
from typer.testing import CliRunner

import dictionaries as D
from activation_cache import ActivationStore, HarvestConfig, Split, harvest
from interp_sae.cli import app
from interp_sae.provenance import ProvenanceError, resolve

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
TRAINED_HOOK = HOOKS[1]  # not the first: a stage that guessed the store's first hook would be caught
SPLIT = Split(val_fraction=0.3, seed=7)  # not the default (0.1, 0)


def _harvest(out, model_folder, corpus, hooks=HOOKS, tokens=100_000):
    config = HarvestConfig(
        out=str(out),
        model=str(model_folder),
        hooks=hooks,
        dataset=str(corpus),
        tokens=tokens,
        context_length=16,
        shard_tokens=160,
        batch_size=8,
        device="cpu",
    )
    harvest(config, progress=False)
    return ActivationStore(out)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_folder, text_corpus):
    """A two-hook store and a dictionary trained on its second hook with a non-default split and
    input normalisation, through `interp-sae train`."""
    root = tmp_path_factory.mktemp("handoffs")
    store = _harvest(root / "store", tiny_model_folder, text_corpus)
    result = invoke(
        "train", store.root, "--out", root / "run", "--hook", TRAINED_HOOK, "--arch", "topk_aux", "--latents", 24,
        "--set", "topk_aux.k=4", "--epochs", 1, "--batch-size", 64, "--val-fraction", SPLIT.val_fraction,
        "--split-seed", SPLIT.seed, "--normalize-input", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return store, root / "run" / "topk_aux"


def test_the_trained_dictionary_records_its_store_hook_split_and_scale(trained):
    store, folder = trained
    meta = D.load_dictionary(folder).metadata
    assert meta["hook_name"] == TRAINED_HOOK
    assert meta["store"]["fingerprint"] == store.fingerprint
    assert Split.from_json(meta["split"]) == SPLIT
    assert meta["input_normalization"]["kind"] == "mean_norm_sqrt_d"
    assert meta["input_normalization"]["input_scale"] == pytest.approx(float(D.load_dictionary(folder).input_scale))
    assert meta["input_normalization"]["input_scale"] != 1.0


def test_inspect_uses_the_recorded_hook_and_split_without_being_told(trained, tmp_path):
    """The defect this guards against: `train --val-fraction 0.05` then `inspect` (which used
    0.1) reported training documents as held-out."""
    store, folder = trained
    result = invoke("inspect", store.root, folder, "--out", tmp_path, "--no-model", "--top-k", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    inspected = json.loads((tmp_path / "inspection.json").read_text())
    held_out = sum(len(store.selection(i, "validation", SPLIT)) for i in range(store.num_shards))
    default_held_out = sum(len(store.selection(i, "validation", Split())) for i in range(store.num_shards))
    assert held_out != default_held_out  # the test can tell the two splits apart
    assert inspected["hook"] == TRAINED_HOOK and inspected["held_out_split"] == SPLIT.to_json()
    assert inspected["tokens"] == held_out


def test_a_store_with_another_identity_is_refused_unless_asked(trained, tmp_path, tiny_model_folder, text_corpus):
    _, folder = trained
    other = _harvest(tmp_path / "other", tiny_model_folder, text_corpus, hooks=[TRAINED_HOOK], tokens=2000)
    refused = invoke("inspect", other.root, folder, "--out", tmp_path / "a", "--no-model", "--device", "cpu")
    assert refused.exit_code == 2
    assert "trained on another store" in refused.output and other.fingerprint in refused.output
    assert "--allow-other-store" in refused.output and "Traceback" not in refused.output
    allowed = invoke(
        "inspect", other.root, folder, "--out", tmp_path / "b", "--no-model", "--device", "cpu", "--allow-other-store"
    )
    assert allowed.exit_code == 0, allowed.output


def test_a_hook_the_dictionary_was_not_trained_on_is_refused_unless_asked(trained, tmp_path):
    store, folder = trained
    dictionary = D.load_dictionary(folder)
    with pytest.raises(
        ProvenanceError, match=rf"trained on hook '{TRAINED_HOOK}', not '{HOOKS[0]}'.*--allow-other-hook"
    ):
        resolve(dictionary, store, HOOKS[0])
    assert resolve(dictionary, store, HOOKS[0], allow_other_hook=True) == (HOOKS[0], SPLIT)
    refused = invoke("inspect", store.root, folder, "--out", tmp_path, "--no-model", "--hook", HOOKS[0])
    assert refused.exit_code == 2 and "--allow-other-hook" in refused.output


@pytest.mark.slow
def test_ablate_export_import_inspect_keep_hook_split_and_scale(trained, tmp_path, tiny_model_folder):
    store, folder = trained
    ablated = invoke(
        "ablate", folder, "--feature", 0, "--text", "The quick brown fox.", "--model", tiny_model_folder,
        "--out", tmp_path / "ablation.json", "--device", "cpu",
    )  # fmt: skip
    assert ablated.exit_code == 0, ablated.output
    assert json.loads((tmp_path / "ablation.json").read_text())["hook"] == TRAINED_HOOK  # from the dictionary

    assert invoke("export-saelens", folder, tmp_path / "saelens").exit_code == 0
    assert json.loads((tmp_path / "saelens/cfg.json").read_text())["metadata"]["hook_name"] == TRAINED_HOOK
    assert invoke("import-saelens", tmp_path / "saelens", tmp_path / "imported").exit_code == 0
    original, imported = D.load_dictionary(folder), D.load_dictionary(tmp_path / "imported")
    x = store.activations(TRAINED_HOOK, list(range(16, 48)))
    torch.testing.assert_close(imported.encode(x), original.encode(x), rtol=1e-4, atol=1e-5)  # scale folded in
    assert imported.metadata["input_normalization"] == original.metadata["input_normalization"]

    result = invoke("inspect", store.root, tmp_path / "imported", "--out", tmp_path / "inspected", "--no-model")
    assert result.exit_code == 0, result.output
    inspected = json.loads((tmp_path / "inspected/inspection.json").read_text())
    assert inspected["hook"] == TRAINED_HOOK and inspected["held_out_split"] == SPLIT.to_json()


def test_a_non_finite_loss_in_train_is_a_message_not_a_traceback(trained, tmp_path):
    store, _ = trained
    result = invoke(
        "train", store.root, "--out", tmp_path, "--hook", TRAINED_HOOK, "--arch", "sae_l1", "--latents", 8,
        "--lr", 1e30, "--epochs", 1, "--batch-size", 64, "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "error: training stopped at step" in result.output and "not finite" in result.output
    assert "Traceback" not in result.output


def test_a_corpus_of_one_txt_file_says_why_training_has_no_held_out_data(tmp_path, tiny_model_folder):
    book = tmp_path / "book.txt"
    book.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    store = _harvest(tmp_path / "store", tiny_model_folder, book, hooks=[TRAINED_HOOK])
    result = invoke("train", store.root, "--out", tmp_path / "run", "--arch", "sae_l1", "--latents", 8, "--quiet")
    assert result.exit_code == 2
    assert "holds 1 document(s)" in result.output and "A local .txt file is one document" in result.output
