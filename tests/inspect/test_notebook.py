"""notebooks/browse_features.ipynb runs top to bottom on small data (so it cannot rot)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from interp_sae.inspector import write_inspection

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_notebook_runs_on_small_data(inspection, sae_folder, tiny_model_folder, tmp_path, monkeypatch):
    results, feature = inspection
    write_inspection(results, tmp_path)
    monkeypatch.setenv("INSPECT_DIR", str(tmp_path))
    monkeypatch.setenv("INSPECT_DICTIONARY", str(sae_folder))
    monkeypatch.setenv("INSPECT_MODEL", str(tiny_model_folder))
    monkeypatch.setenv("INSPECT_FEATURE", str(feature))
    monkeypatch.setenv("INSPECT_DEVICE", "cpu")
    monkeypatch.setenv("MPLBACKEND", "agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(REPO / "notebooks/browse_features.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    text = "\n".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert f"feature {feature}: fires on" in text and "mean Δ loss per token" in text
