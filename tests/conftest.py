import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))  # tiny_models, helper scripts; after the real packages

from tiny_models import build_pythia_like, build_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_hf_model(tiny_tokenizer):
    return build_pythia_like(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_lm(tiny_hf_model, tiny_tokenizer):
    from activation_cache import LanguageModel

    return LanguageModel.from_hf(tiny_hf_model, tiny_tokenizer, name="tiny-pythia", device="cpu")


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, tiny_tokenizer):
    """The tiny model saved as a local Hugging Face folder (the CLI's --model PATH). Built afresh:
    the bridge rewires the modules of the model it wraps, which then no longer saves cleanly."""
    folder = tmp_path_factory.mktemp("tiny-pythia")
    build_pythia_like(len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A local .jsonl corpus of 30 short documents, 'doc 0' … 'doc 29'."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    lines = [
        json.dumps(
            {
                "text": f"Document {i}: the quick brown fox jumps over the lazy dog {i} times. "
                + "Sparse autoencoders find features. " * (i % 4 + 1)
            }
        )
        for i in range(30)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
