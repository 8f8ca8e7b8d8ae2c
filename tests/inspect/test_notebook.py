"""notebooks/browse_features.ipynb and notebooks/steering.ipynb run top to bottom on small data
(so they cannot rot), and show the library's views."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from conftest import HOOK
from nbclient import NotebookClient

from interp_sae.inspector import write_inspection

REPO = Path(__file__).resolve().parents[2]


def run_notebook(name: str, monkeypatch, **env: str) -> tuple[str, str]:
    """Execute a notebook with `env` set; (its printed text, its HTML outputs)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    text = "\n".join(o.get("text", "") for o in outputs)
    pages = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    return text, pages


@pytest.mark.slow
def test_browse_features_notebook_shows_the_reports_views(
    inspection, sae_folder, tiny_model_folder, tmp_path, monkeypatch
):
    results, feature = inspection
    write_inspection(results, tmp_path)
    text, pages = run_notebook(
        "browse_features.ipynb",
        monkeypatch,
        INSPECT_DIR=str(tmp_path),
        INSPECT_DICTIONARY=str(sae_folder),
        INSPECT_MODEL=str(tiny_model_folder),
        INSPECT_FEATURE=str(feature),
        INSPECT_DEVICE="cpu",
    )
    assert f'<h1 id="feature-title">Feature {feature}</h1>' in pages
    assert 'id="neighbours-decoder"' in pages and "<th>loss effect</th>" in pages
    assert "Features that fire most on the text" in pages and "<th>top features</th>" in pages
    assert "mean Δ loss per token" in text


@pytest.mark.slow
def test_steering_notebook_runs_and_strength_zero_changes_nothing(sae_folder, tiny_model_folder, monkeypatch):
    text, pages = run_notebook(
        "steering.ipynb",
        monkeypatch,
        STEER_DICTIONARY=str(sae_folder),
        STEER_MODEL=str(tiny_model_folder),
        STEER_HOOK=HOOK,
        STEER_FEATURE="3",
        STEER_STRENGTH="4",
        STEER_PROMPT="The quick brown fox",
        STEER_DEVICE="cpu",
    )
    assert "strength 0, sampled:" in text  # the notebook asserts plain == steered at strength 0
    assert pages.count("<h2>Steered</h2>") == 2 and "Features that fire most on the text" in pages
    assert len(re.findall(r"^ *[+-]\d+\.\d\d  [\"']", text, re.M)) == 4  # the sweep: one line per strength
