"""Fixtures: a local Hub server, huggingface_hub pointed at it with throwaway home/cache, and dictionary folders."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import disable_progress_bars
from safetensors.torch import save_file

from .local_hub_server import LocalHub

ALICE_TOKEN = "hf_alice_write_token"
BOB_TOKEN = "hf_bob_write_token"
TOKENS = {ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}

disable_progress_bars()


@pytest.fixture
def hub():
    with LocalHub(TOKENS) as server:
        yield server


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home (token file, cache, …) and no token in the environment.

    huggingface_hub reads its settings into `constants` at import, so they are patched there;
    the environment variables are set too, for subprocesses.
    """
    home = tmp_path / "hf_home"
    for name, value in list(vars(constants).items()):
        if isinstance(value, str) and value.startswith(constants.HF_HOME):
            monkeypatch.setattr(constants, name, str(home) + value[len(constants.HF_HOME) :])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # a local server cannot serve the Xet protocol
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    return home


def point_client_at(monkeypatch, endpoint: str) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


@pytest.fixture
def online(hub, hf_home, monkeypatch) -> LocalHub:
    """The client talks to the local server; alice's token is in HF_TOKEN."""
    point_client_at(monkeypatch, hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    return hub


@pytest.fixture
def closed_port_endpoint() -> str:
    """An endpoint where nothing listens: the port was free a moment ago and is closed now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_dictionary(folder: Path, seed: int, **config) -> dict[str, torch.Tensor]:
    """Write a small dictionary folder (config.json + model.safetensors); returns its tensors."""
    generator = torch.Generator().manual_seed(seed)
    d, n = config.get("d", 8), config.get("n_features", 32)
    tensors = {
        "W_enc": torch.randn(d, n, generator=generator),
        "b_enc": torch.randn(n, generator=generator),
        "W_dec": torch.randn(n, d, generator=generator).to(torch.bfloat16),  # a non-default dtype must survive too
        "b_dec": torch.randn(d, generator=generator),
    }
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return tensors


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype and torch.equal(actual[name], tensor), name
