"""Push with the real huggingface_hub client to the local server, pull into an empty cache, compare exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants
from safetensors.torch import load_file

from interp_sae import model_card
from interp_sae.hub import HubError, download, push_to_hub

from .conftest import ALICE_TOKEN, assert_same_tensors, make_dictionary

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"architecture": "topk", "hook_name": "blocks.3.hook_resid_post", "d": 8, "n_features": 32, "model_id": "gpt2"}


def cache_files() -> list[str]:
    cache = Path(constants.HF_HUB_CACHE)
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_single_dictionary_round_trips_exactly_through_lfs(online, tmp_path):
    tensors = make_dictionary(tmp_path / "sae", seed=0, **CONFIG)

    commit = push_to_hub(tmp_path / "sae", "alice/sae")

    repo = online.repos["alice/sae"]
    assert repo.refs["main"] == commit.oid
    assert sorted(repo.commits[commit.oid]) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "index.json",
        "model.safetensors",
    ]
    assert online.lfs_committed_paths == ["model.safetensors"]  # the weights took the LFS path
    assert cache_files() == []  # pushing leaves the cache empty: the pull below starts from nothing

    folder = download("alice/sae")

    assert folder == Path(constants.HF_HUB_CACHE) / "models--alice--sae" / "snapshots" / commit.oid
    assert_same_tensors(load_file(folder / "model.safetensors"), tensors)
    assert json.loads((folder / "config.json").read_text()) == CONFIG
    assert online.cdn_authorized_requests == []  # the token never left the Hub for the blob storage


def test_two_dictionaries_go_in_one_commit_and_one_is_pulled_by_subfolder(online, tmp_path):
    make_dictionary(tmp_path / "sweep" / "layer_0", seed=0, **{**CONFIG, "hook_name": "blocks.0.hook_resid_post"})
    tensors_1 = make_dictionary(
        tmp_path / "sweep" / "layer_1", seed=1, **{**CONFIG, "hook_name": "blocks.1.hook_resid_post"}
    )

    commit = push_to_hub(tmp_path / "sweep", "alice/sweep", commit_message="Two layers")

    repo = online.repos["alice/sweep"]
    assert len(repo.commits) == 2  # the repo's initial commit and ours
    assert sorted(repo.commits[commit.oid]) == [
        ".gitattributes", "README.md", "index.json",
        "layer_0/config.json", "layer_0/model.safetensors",
        "layer_1/config.json", "layer_1/model.safetensors",
    ]  # fmt: skip

    folder = download("alice/sweep", subfolder="layer_1")

    assert folder.name == "layer_1"
    assert_same_tensors(load_file(folder / "model.safetensors"), tensors_1)
    assert sorted(p.name for p in folder.parent.iterdir()) == [
        "README.md",
        "index.json",
        "layer_1",
    ]  # layer_0 not fetched


def test_list_of_folders_go_under_their_names(online, tmp_path):
    make_dictionary(tmp_path / "a" / "resid", seed=0, **CONFIG)
    make_dictionary(tmp_path / "b" / "mlp", seed=1, **CONFIG)

    commit = push_to_hub([tmp_path / "a" / "resid", tmp_path / "b" / "mlp"], "alice/mixed")

    files = online.repos["alice/mixed"].commits[commit.oid]
    assert {"resid/model.safetensors", "mlp/model.safetensors"} <= files.keys()


def test_card_and_index_are_generated_from_the_configs(online, tmp_path):
    metrics = {"mse": 0.0123, "l0": 31.5}
    make_dictionary(tmp_path / "sweep" / "layer_0", seed=0, **CONFIG, dataset="NeelNanda/pile-10k", metrics=metrics)
    make_dictionary(tmp_path / "sweep" / "layer_1", seed=1, architecture="vaease", d=8)

    push_to_hub(tmp_path / "sweep", "alice/sweep")

    entries = [
        {"subfolder": "layer_0", "architecture": "topk", "hook_name": "blocks.3.hook_resid_post", "d": 8,
         "n_features": 32, "model_id": "gpt2", "dataset": "NeelNanda/pile-10k", "metrics": metrics},
        {"subfolder": "layer_1", "architecture": "vaease", "hook_name": None, "d": 8,
         "n_features": None, "model_id": None, "dataset": None, "metrics": None},
    ]  # fmt: skip
    index = json.loads(online.file_bytes("alice/sweep", "index.json"))
    assert index == {"library_name": "interp-sae", "index_version": 1, "dictionaries": entries}
    card = online.file_bytes("alice/sweep", "README.md").decode()
    assert card == model_card.render_card("alice/sweep", entries)  # the card's text itself: test_model_card.py


def test_a_training_run_folder_is_pushed_as_it_is_written(online, tmp_path):
    """The trainer's layout: run-level files at the root, one folder per dictionary with its extras."""
    run = tmp_path / "run"
    tensors = make_dictionary(run / "topk_32", seed=0)
    (run / "topk_32" / "config.json").write_text(
        json.dumps({"format_version": 1, "architecture": "topk", "config": {"d": 8, "n_latents": 32, "k": 4}})
    )
    (run / "topk_32" / "metrics.json").write_text(json.dumps({"step": 500, "mse": 0.25}))
    (run / "topk_32" / "ad_re_curve.csv").write_text("k,re\n1,0.5\n")
    (run / "topk_32" / "ad_re_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "train_config.json").write_text("{}")
    (run / "log.jsonl").write_text("{}\n")

    commit = push_to_hub(run, "alice/run")

    assert sorted(online.repos["alice/run"].commits[commit.oid]) == [
        ".gitattributes", "README.md", "index.json", "topk_32/ad_re_curve.csv", "topk_32/ad_re_curve.png",
        "topk_32/config.json", "topk_32/metrics.json", "topk_32/model.safetensors",
    ]  # fmt: skip
    [entry] = json.loads(online.file_bytes("alice/run", "index.json"))["dictionaries"]
    assert (entry["architecture"], entry["d"], entry["n_features"]) == ("topk", 8, 32)
    assert entry["metrics"] == {"step": 500, "mse": 0.25}
    assert_same_tensors(load_file(download("alice/run", subfolder="topk_32") / "model.safetensors"), tensors)


def test_a_later_push_keeps_earlier_dictionaries_in_the_index(online, tmp_path):
    make_dictionary(tmp_path / "first" / "layer_0", seed=0, **CONFIG)
    make_dictionary(tmp_path / "second" / "layer_1", seed=1, **{**CONFIG, "n_features": 64})
    make_dictionary(tmp_path / "again" / "layer_0", seed=2, **{**CONFIG, "n_features": 16})

    push_to_hub(tmp_path / "first", "alice/sweep")
    push_to_hub(tmp_path / "second", "alice/sweep")
    push_to_hub(tmp_path / "again", "alice/sweep")  # replaces layer_0's entry

    index = json.loads(online.file_bytes("alice/sweep", "index.json"))
    assert [(e["subfolder"], e["n_features"]) for e in index["dictionaries"]] == [("layer_0", 16), ("layer_1", 64)]


def test_push_to_a_new_branch_and_pull_each_revision(online, tmp_path):
    on_main = make_dictionary(tmp_path / "v1", seed=0, **CONFIG)
    on_branch = make_dictionary(tmp_path / "v2", seed=1, **CONFIG)
    push_to_hub(tmp_path / "v1", "alice/sae")

    commit = push_to_hub(tmp_path / "v2", "alice/sae", revision="experiment")

    repo = online.repos["alice/sae"]
    assert repo.refs["experiment"] == commit.oid and repo.refs["main"] != commit.oid
    assert_same_tensors(load_file(download("alice/sae", revision="experiment") / "model.safetensors"), on_branch)
    assert_same_tensors(load_file(download("alice/sae") / "model.safetensors"), on_main)


def test_create_pr_commits_to_a_pull_request_ref(online, tmp_path):
    make_dictionary(tmp_path / "v1", seed=0, **CONFIG)
    proposed = make_dictionary(tmp_path / "v2", seed=1, **CONFIG)
    push_to_hub(tmp_path / "v1", "alice/sae")

    commit = push_to_hub(tmp_path / "v2", "alice/sae", create_pr=True)

    assert commit.pr_url == f"{online.endpoint}/alice/sae/discussions/1"
    assert online.repos["alice/sae"].refs["refs/pr/1"] == commit.oid
    assert_same_tensors(load_file(download("alice/sae", revision="refs/pr/1") / "model.safetensors"), proposed)


def test_private_repo_needs_the_owners_token_to_pull(online, tmp_path, monkeypatch):
    tensors = make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    push_to_hub(tmp_path / "sae", "alice/secret", private=True)
    assert online.repos["alice/secret"].private

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="^Repository 'alice/secret' not found on .* or it is private"):
        download("alice/secret")

    assert_same_tensors(load_file(download("alice/secret", token=ALICE_TOKEN) / "model.safetensors"), tensors)


def test_token_from_the_login_file(online, tmp_path, monkeypatch):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(ALICE_TOKEN)  # what `hf auth login` leaves behind

    push_to_hub(tmp_path / "sae", "alice/sae")

    assert "alice/sae" in online.repos


def test_repo_id_without_namespace_goes_to_the_token_owner(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)

    commit = push_to_hub(tmp_path / "sae", "sae")

    assert commit.repo_url.repo_id == "alice/sae"
    assert "alice/sae" in online.repos


@pytest.mark.slow  # a fresh Python process
def test_environment_variables_alone_select_the_endpoint(online, tmp_path):
    """HF_ENDPOINT, HF_TOKEN and HF_HUB_DISABLE_XET set before a fresh process starts, as users do."""
    tensors = make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    script = f"from interp_sae.hub import download, push_to_hub\npush_to_hub({str(tmp_path / 'sae')!r}, 'alice/sae')\nprint(download('alice/sae'))"

    result = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert os.environ["HF_ENDPOINT"] == online.endpoint and os.environ["HF_HUB_DISABLE_XET"] == "1"
    assert online.lfs_committed_paths == ["model.safetensors"]
    assert_same_tensors(load_file(Path(result.stdout.strip()) / "model.safetensors"), tensors)


@pytest.mark.slow  # a fresh Python process
def test_pull_works_offline_from_the_cache(online, tmp_path):
    """HF_HUB_OFFLINE=1 set in a fresh process, as users do, with the server gone."""
    tensors = make_dictionary(tmp_path / "sweep" / "layer_0", seed=0, **CONFIG)
    make_dictionary(tmp_path / "sweep" / "layer_1", seed=1, **CONFIG)
    push_to_hub(tmp_path / "sweep", "alice/sweep")
    folder = download("alice/sweep", subfolder="layer_0")
    online.stop()

    script = (
        "from interp_sae.hub import HubError, download\n"
        "print(download('alice/sweep', subfolder='layer_0'))\n"
        "try:\n    download('alice/sweep', subfolder='layer_1')\nexcept HubError as error:\n    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    offline_folder, error = result.stdout.splitlines()
    assert Path(offline_folder) == folder
    assert_same_tensors(load_file(Path(offline_folder) / "model.safetensors"), tensors)
    assert error == (
        "HF_HUB_OFFLINE=1 is set and 'alice/sweep' is not (fully) in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}): download it once with network access, or unset HF_HUB_OFFLINE."
    )


def test_cached_pull_survives_the_server_going_down(online, tmp_path):
    tensors = make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    push_to_hub(tmp_path / "sae", "alice/sae")
    folder = download("alice/sae")
    online.stop()

    assert download("alice/sae") == folder
    assert_same_tensors(load_file(folder / "model.safetensors"), tensors)


def test_local_path_is_returned_as_is(hf_home, tmp_path):
    make_dictionary(tmp_path / "sweep" / "layer_0", seed=0, **CONFIG)

    assert download(tmp_path / "sweep" / "layer_0") == tmp_path / "sweep" / "layer_0"
    assert download(str(tmp_path / "sweep"), subfolder="layer_0") == tmp_path / "sweep" / "layer_0"
    assert cache_files() == []
