"""Every failure names the problem and the fix, whether it comes from the Hub, the network or the files."""

from __future__ import annotations

import re

import pytest
from huggingface_hub import HfApi, constants

from interp_sae.hub import HubError, download, push_to_hub

from .conftest import ALICE_TOKEN, make_dictionary, point_client_at

CONFIG = {"architecture": "topk", "d": 8, "n_features": 32}
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN"


def raises(message: str):
    return pytest.raises(HubError, match=f"^{re.escape(message)}$")


def test_push_without_any_token(online, tmp_path, monkeypatch):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    monkeypatch.delenv("HF_TOKEN")

    with raises(f"No Hugging Face token found, and pushing needs one with write access: {LOGIN_HINT}."):
        push_to_hub(tmp_path / "sae", "alice/sae")
    assert online.repos == {}


def test_push_with_a_wrong_token(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)

    with raises(f"The Hub at {online.endpoint} rejected your token (401): it is invalid or expired; {LOGIN_HINT}."):
        push_to_hub(tmp_path / "sae", "alice/sae", token="hf_not_a_real_token")
    assert online.repos == {}


def test_pull_with_a_wrong_token(online, tmp_path, monkeypatch):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    push_to_hub(tmp_path / "sae", "alice/sae")
    monkeypatch.setenv("HF_TOKEN", "hf_expired_token")

    with raises(f"The Hub at {online.endpoint} rejected your token (401): it is invalid or expired; {LOGIN_HINT}."):
        download("alice/sae")


def test_push_to_someone_elses_namespace(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)

    with raises(
        "Your token may not write to 'bob/sae' (403: You don't have the rights to create a model under the "
        "namespace bob); use one with write access."
    ):
        push_to_hub(tmp_path / "sae", "bob/sae")


def test_pull_a_repo_that_does_not_exist(online):
    with raises(
        f"Repository 'alice/nope' not found on {online.endpoint}, or it is private and your token cannot read it. "
        f"Check the repo id; for a private repo, {LOGIN_HINT} with a token that can read it."
    ):
        download("alice/nope")


def test_pull_a_revision_that_does_not_exist(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    push_to_hub(tmp_path / "sae", "alice/sae")

    with raises(f"Revision 'v2' not found in repository 'alice/sae' on {online.endpoint}."):
        download("alice/sae", revision="v2")


def test_pull_a_subfolder_that_does_not_exist(online, tmp_path):
    make_dictionary(tmp_path / "sweep" / "layer_0", seed=0, **CONFIG)
    make_dictionary(tmp_path / "sweep" / "layer_1", seed=1, **CONFIG)
    push_to_hub(tmp_path / "sweep", "alice/sweep")

    available = "Subfolders with dictionaries: 'layer_0', 'layer_1'; pass subfolder=..."
    with raises(f"No dictionary in subfolder 'layer_9' of 'alice/sweep' (no config.json). {available}"):
        download("alice/sweep", subfolder="layer_9")
    with raises(f"No dictionary at the root of 'alice/sweep' (no config.json). {available}"):
        download("alice/sweep")


def test_push_when_the_server_is_down(hf_home, closed_port_endpoint, tmp_path, monkeypatch):
    point_client_at(monkeypatch, closed_port_endpoint)
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)

    with raises(f"Cannot reach the Hub: no network, or endpoint {closed_port_endpoint} is unreachable."):
        push_to_hub(tmp_path / "sae", "alice/sae", token=ALICE_TOKEN)


def test_pull_when_the_server_is_down_and_nothing_is_cached(hf_home, closed_port_endpoint, monkeypatch):
    point_client_at(monkeypatch, closed_port_endpoint)

    with raises(
        f"Cannot reach the Hub: no network, or endpoint {closed_port_endpoint} is unreachable. 'alice/sae' "
        "(revision 'v1') is not in the cache either; once it is, set HF_HUB_OFFLINE=1 to use the cache."
    ):
        download("alice/sae", revision="v1")


def test_push_in_offline_mode(online, tmp_path, monkeypatch):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with raises("HF_HUB_OFFLINE=1 is set, and pushing needs the network: unset it."):
        push_to_hub(tmp_path / "sae", "alice/sae")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-5], "incomplete metadata, file not fully covered"),
        (lambda data: data[:6], "header too small"),
        (lambda data: b"\xff" * 8 + data[8:], "header too large"),
    ],
    ids=["truncated", "cut-in-header", "garbage-header"],
)
def test_pull_a_damaged_safetensors_file(online, tmp_path, damage, reason):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    weights = tmp_path / "sae" / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    # Someone else's broken upload, straight through the client: push_to_hub itself refuses it.
    api = HfApi(token=ALICE_TOKEN)
    api.create_repo("alice/broken")
    commit = api.upload_folder(repo_id="alice/broken", folder_path=tmp_path / "sae")

    snapshot = f"{constants.HF_HUB_CACHE}/models--alice--broken/snapshots/{commit.oid}"
    with raises(
        f"{snapshot}/model.safetensors is not a valid safetensors file (Error while deserializing header: "
        f"{reason}): it is corrupt or truncated. Download it again, or re-save it if it is yours."
    ):
        download("alice/broken")


def test_pull_a_config_that_is_not_json(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    (tmp_path / "sae" / "config.json").write_text('{"architecture": "topk", "d": 8')  # cut short
    api = HfApi(token=ALICE_TOKEN)
    api.create_repo("alice/broken")
    commit = api.upload_folder(repo_id="alice/broken", folder_path=tmp_path / "sae")

    snapshot = f"{constants.HF_HUB_CACHE}/models--alice--broken/snapshots/{commit.oid}"
    with raises(
        f"{snapshot}/config.json is not valid JSON (Expecting ',' delimiter: line 1 column 32 (char 31)); "
        "the file is corrupt."
    ):
        download("alice/broken")


def test_push_refuses_a_truncated_file_before_any_request(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    weights = tmp_path / "sae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])

    with raises(
        f"{weights} is not a valid safetensors file (Error while deserializing header: incomplete metadata, "
        "file not fully covered): it is corrupt or truncated. Download it again, or re-save it if it is yours."
    ):
        push_to_hub(tmp_path / "sae", "alice/sae")
    assert online.repos == {}


def test_push_refuses_pickle_and_other_files(online, tmp_path):
    make_dictionary(tmp_path / "sae", seed=0, **CONFIG)
    (tmp_path / "sae" / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (tmp_path / "sae" / ".DS_Store").write_bytes(b"hidden files are skipped")

    with raises(
        "Only .json, .safetensors, .csv, .png files are shared (no pickle, nothing executable); move these out of the "
        f"dictionary folder or convert them: ['{tmp_path / 'sae' / 'optimizer.pt'}']."
    ):
        push_to_hub(tmp_path / "sae", "alice/sae")


def test_push_a_folder_without_dictionaries(online, tmp_path):
    (tmp_path / "empty").mkdir()

    with raises(
        f"No dictionary in {tmp_path / 'empty'}: expected config.json and model.safetensors there, or in its subfolders."
    ):
        push_to_hub(tmp_path / "empty", "alice/sae")


def test_push_folders_with_the_same_name(online, tmp_path):
    make_dictionary(tmp_path / "a" / "sae", seed=0, **CONFIG)
    make_dictionary(tmp_path / "b" / "sae", seed=1, **CONFIG)

    with raises("Dictionary folders must have distinct names (their subfolders in the repo): ['sae']."):
        push_to_hub([tmp_path / "a" / "sae", tmp_path / "b" / "sae"], "alice/sae")


def test_local_paths_that_are_not_dictionaries(hf_home, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")

    with raises(f"{tmp_path / 'half'} is not a dictionary folder: model.safetensors is missing."):
        download(tmp_path / "half")
    with raises(f"Local path {tmp_path / 'gone'} does not exist (and it is not a Hub repo id of the form 'org/name')."):
        download(str(tmp_path / "gone"))
    with raises("subfolder must be a relative path inside the repository, got '../other'."):
        download("alice/sae", subfolder="../other")
