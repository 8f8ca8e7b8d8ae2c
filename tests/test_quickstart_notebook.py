"""notebooks/quickstart.ipynb runs top to bottom on tiny settings (so it cannot rot)."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_harvest_train_inspect(tiny_model_folder, text_corpus, tmp_path, monkeypatch):
    settings = {
        "MODEL": str(tiny_model_folder),
        "DATASET": str(text_corpus),
        "HOOK": "blocks.2.hook_resid_post",
        "TOKENS": "4096",
        "CONTEXT": "32",
        "LATENTS": "16",
        "EPOCHS": "1",
        "OUT": str(tmp_path),
        "DEVICE": "cpu",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"QUICKSTART_{key}", value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(REPO / "notebooks/quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    text = "\n".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert re.search(r"[\d,]+ tokens, \d+ shards, d = 32; intact: True", text), text[:2000]
    assert "vaease    FVU" in text and "sae_topk  FVU" in text
    assert "fraction of LM loss recovered:" in text and "top contexts:" in text
    assert (tmp_path / "inspect" / "report.html").exists()
