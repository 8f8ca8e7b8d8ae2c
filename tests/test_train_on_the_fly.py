"""Training on the fly: activations from the model straight into the trainer, no store."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import dictionaries as D
from activation_cache import HarvestConfig, Split, harvest
from activation_cache.hooks import HookError
from activation_cache.stream import ActivationStream, StreamPlan, forward_blocks, held_out_set, packed_rows
from interp_sae.cli import app
from interp_sae.errors import ConfigError
from interp_sae.provenance import ProvenanceError, resolve
from interp_sae.splice import loss_recovered
from interp_sae.train_on_the_fly import OnTheFlyConfig, train_on_the_fly

HOOK, MLP = "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"
SPLIT = Split(val_fraction=0.2, seed=3)
SCRIPT = Path(__file__).with_name("on_the_fly_script.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def settings(corpus, **overrides):
    values = dict(
        model="tiny-pythia",
        hooks=[HOOK],
        dataset=str(corpus),
        tokens=512,
        context_length=16,
        forward_rows=4,
        batch_size=32,
        buffer="96",
        split=SPLIT,
        loss_rows=8,
    )
    return OnTheFlyConfig(**{**values, **overrides})


def train_config(**overrides):
    values = dict(epochs=1, checkpoint_every=5, progress=False, device="cpu", prepare_vectors=64, eval_max_vectors=128)
    return D.TrainConfig(**{**values, **overrides})


def topk(d):
    return {"sae_topk": D.make_config("sae_topk", d=d, n_latents=16, k=4)}


def training_tokens(lm, corpus, split, hooks=(HOOK,)):
    """(document, position) of every training-side document token, in corpus order."""
    plan = StreamPlan(corpus_spec(corpus), list(hooks), 16, split)
    return [
        (int(doc), int(pos))
        for _, docs, positions, _ in packed_rows(lm, plan)
        for doc, pos in zip(docs, positions)
        if doc >= 0
    ]


def corpus_spec(corpus):
    from activation_cache import CorpusSpec

    return CorpusSpec(str(corpus))


class Recording(ActivationStream):
    """Keeps the (document, position) of every vector handed to the trainer."""

    seen: ClassVar[list[tuple[int, int]]] = []

    def _next_batch(self):
        batch = super()._next_batch()
        Recording.seen.extend(map(tuple, self.last_origin.tolist()))
        return batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm, text_corpus):
    """Two hooks trained on the fly in one run, with the trained-on tokens recorded."""
    out = tmp_path_factory.mktemp("on-the-fly")
    Recording.seen = []
    said = []
    result = train_on_the_fly(
        settings(text_corpus, hooks=[HOOK, MLP], tokens=100_000),
        topk,
        out,
        train_config(),
        lm=tiny_lm,
        say=said.append,
        stream_factory=Recording,
    )
    return result, out, list(Recording.seen), said


def test_every_training_token_is_trained_on_once_and_no_held_out_one(trained, tiny_lm, text_corpus):
    result, _, seen, said = trained
    expected = training_tokens(tiny_lm, text_corpus, SPLIT)
    budget = len(expected) // 32 * 32  # the corpus is shorter than --tokens: all of it, in whole batches
    assert result.corpus_exhausted and result.tokens == budget == len(seen)
    assert Counter(seen) == Counter(expected[:budget])  # each exactly once
    assert not SPLIT.mask(np.array([doc for doc, _ in seen]), "validation").any()
    assert seen[:64] != expected[:64]  # shuffled, not in corpus order
    assert said[0] == (
        f"the corpus {str(text_corpus)!r} holds {len(expected):,} training tokens, fewer than the 100,000 asked: "
        f"training on {budget:,} ({budget // 32} steps per epoch)"
    )


def test_the_held_out_set_holds_only_held_out_documents(tiny_lm, text_corpus):
    plan = StreamPlan(corpus_spec(text_corpus), [HOOK], 16, SPLIT, side="validation")
    held_out = held_out_set(tiny_lm, plan, 4, 2, max_vectors=100, max_rows=3)
    assert len(held_out.doc_ids) == 100 and held_out.vectors[HOOK].shape == (100, 32)
    assert SPLIT.mask(held_out.doc_ids.numpy(), "validation").all()
    assert held_out.token_ids.shape == (3, 16) and held_out.doc_mask[:, 0].logical_not().all()  # BOS is no document
    # the same vectors the forward pass gives those rows
    first = next(forward_blocks(tiny_lm, plan, 4, 2))
    torch.testing.assert_close(held_out.vectors[HOOK][:10].float(), first.vectors[HOOK][:10].bfloat16().float())


def test_results_are_recorded_like_store_training(trained):
    result, out, _, _ = trained
    assert sorted(result.loss_recovered) == [f"{MLP}/sae_topk", f"{HOOK}/sae_topk"]
    for hook, d in ((HOOK, 32), (MLP, 32)):
        folder = out / hook / "sae_topk"
        meta = json.loads((folder / "config.json").read_text())["metadata"]
        assert meta["hook_name"] == hook and meta["model_name"] == "tiny-pythia" and meta["store"] is None
        assert meta["split"] == {"val_fraction": 0.2, "split_seed": 3, "by": "document"}
        assert meta["on_the_fly"]["tokens"] == result.tokens and meta["on_the_fly"]["buffer_vectors"] == 96
        assert meta["on_the_fly"]["dataset"]["kind"] == "local"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["split"] == "held_out" and metrics["fvu_deterministic"] >= 0
        recovered = metrics["loss_recovered"]
        assert recovered == result.loss_recovered[f"{hook}/sae_topk"]
        assert recovered["split"] == "validation" and recovered["predictions"] > 0
        gap = recovered["zero_ablated_loss"] - recovered["clean_loss"]
        assert recovered["fraction_recovered"] == pytest.approx(
            (recovered["zero_ablated_loss"] - recovered["spliced_loss"]) / gap
        )
        assert D.load_dictionary(folder).config.d == d
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["dictionary"] for r in log if r["event"] == "eval"} == {f"{HOOK}/sae_topk", f"{MLP}/sae_topk"}


def test_a_store_of_the_same_model_is_accepted_later_and_another_models_refused(
    trained, tiny_lm, text_corpus, tmp_path
):
    _, out, _, _ = trained
    store_dir = tmp_path / "store"
    config = HarvestConfig(
        out=str(store_dir), model="tiny-pythia", hooks=[HOOK], dataset=str(text_corpus), tokens=512,
        context_length=16, shard_tokens=256, batch_size=8, device="cpu",
    )  # fmt: skip
    harvest(config, model=tiny_lm, progress=False)
    from activation_cache import ActivationStore

    store = ActivationStore(store_dir)
    dictionary = D.load_dictionary(out / HOOK / "sae_topk")
    assert resolve(dictionary, store) == (HOOK, SPLIT)  # no store fingerprint to differ, the same model
    assert loss_recovered(tiny_lm, dictionary, store)["hook"] == HOOK
    dictionary.metadata["model_name"] = "another-model"
    with pytest.raises(ProvenanceError, match="trained on the fly on model 'another-model'.*--allow-other-store"):
        resolve(dictionary, store)
    assert resolve(dictionary, store, allow_other_store=True) == (HOOK, SPLIT)


def test_a_stream_restored_mid_epoch_yields_what_it_would_have(tiny_lm, text_corpus):
    plan = StreamPlan(corpus_spec(text_corpus), [HOOK, MLP], 16, SPLIT)
    make = lambda: ActivationStream(  # noqa: E731
        tiny_lm, plan, widths={HOOK: 32, MLP: 32}, stop=2, batch_size=32, vectors_per_epoch=640, capacity=96,
        rows_per_pass=4, seed=5, device=torch.device("cpu"),
    )  # fmt: skip
    straight = [b for b in make().batches(0)]
    interrupted = make()
    batches = interrupted.batches(0)
    head = [next(batches) for _ in range(7)]
    tensors, state = interrupted.state_dict()
    state = json.loads(json.dumps(state))
    assert len(tensors["origins"]) == interrupted.filled - interrupted.head  # only what is not yet handed out
    resumed = make()
    resumed.load_state_dict(tensors, state)
    rest = list(resumed.batches(0, start=7))
    assert len(straight) == 20 == len(head) + len(rest)
    for a, b in zip(straight, head + rest):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="can start epoch 0 at batch 0, or where its restored state stands"):
        next(make().batches(0, start=3))


@pytest.mark.slow
def test_sigkill_then_the_same_command_trains_every_token_once_bit_identically(
    tmp_path, tiny_model_folder, text_corpus
):
    def run(out, record, *kill):
        return subprocess.run(
            [sys.executable, str(SCRIPT), str(tiny_model_folder), str(text_corpus), str(out), str(record), *kill],
            capture_output=True, text=True, env=ENV,
        )  # fmt: skip

    killed = run(tmp_path / "run", tmp_path / "record.jsonl", "5")  # at step 35 (epoch 1, batch 3): step 28's stands
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "sae_topk").exists()
    resumed = run(tmp_path / "run", tmp_path / "record.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = run(tmp_path / "straight", tmp_path / "straight.jsonl")
    assert straight.returncode == 0, straight.stderr[-2000:]

    def batches(path):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        last = {}
        for epoch, index, origin in records:  # a batch redone after the resume: the same batch again
            assert last.get((epoch, index), origin) == origin
            last[(epoch, index)] = origin
        return records, last

    records, trained_on = batches(tmp_path / "record.jsonl")
    straight_records, straight_on = batches(tmp_path / "straight.jsonl")
    assert len(records) == 64 + 7 and len(straight_records) == len(straight_on) == 64  # 2 epochs × 32 steps
    assert trained_on == straight_on
    tokens = [
        Counter(tuple(p) for (e, _), origin in trained_on.items() if e == epoch for p in origin) for epoch in (0, 1)
    ]
    assert tokens[0] == tokens[1] and sum(tokens[0].values()) == 1024 and set(tokens[0].values()) == {1}
    held_out = Split().mask(np.array([doc for doc, _ in tokens[0]]), "validation")
    assert not held_out.any()
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert [json.loads(line)["step"] for line in log.splitlines() if '"resume"' in line] == [28]
    for hook in ("blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"):
        for name in ("sae_topk", "vaease"):
            a = load_file(tmp_path / "run" / hook / name / "model.safetensors")
            b = load_file(tmp_path / "straight" / hook / name / "model.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{hook}/{name}"


def test_bad_input_is_refused_before_any_long_work(tiny_lm, text_corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"holds 16 vectors per hook, fewer than one batch of 32: raise --buffer"):
        settings(text_corpus, buffer="16")
    with pytest.raises(ConfigError, match=r"--buffer 'lots': give a number of vectors"):
        settings(text_corpus, buffer="lots")
    with pytest.raises(ConfigError, match=r"holds 64 vectors per hook, fewer than one batch of 128"):
        train_on_the_fly(
            settings(text_corpus, buffer="4KiB", batch_size=128), topk, tmp_path, train_config(), lm=tiny_lm
        )
    with pytest.raises(HookError, match=r"(?s)unknown hook 'blocks\.1\.hook_nothing'.*blocks\.0\.hook_resid_post"):
        train_on_the_fly(
            settings(text_corpus, hooks=["blocks.1.hook_nothing"]), topk, tmp_path, train_config(), lm=tiny_lm
        )
    with pytest.raises(ConfigError, match=r"holds \d+ training tokens, fewer than one batch of 100,000"):
        train_on_the_fly(
            settings(text_corpus, batch_size=100_000, buffer="100000"), topk, tmp_path, train_config(), lm=tiny_lm
        )
    with pytest.raises(ConfigError, match="none of the corpus's documents falls on the validation side"):
        train_on_the_fly(settings(text_corpus, split=Split(0.0)), topk, tmp_path / "a", train_config(), lm=tiny_lm)
    with pytest.raises(ConfigError, match=r"holds a run trained on the fly with other split"):
        train_on_the_fly(settings(text_corpus), topk, tmp_path / "a", train_config(), lm=tiny_lm)
    assert not (tmp_path / "a" / "checkpoint.safetensors").exists()


def test_the_command_line_trains_on_the_fly_without_a_store(tiny_model_folder, text_corpus, tmp_path):
    runner = CliRunner()
    neither = runner.invoke(app, ["train", "--out", str(tmp_path / "x")])
    assert neither.exit_code == 2 and "pass a STORE to train from, or --model" in neither.output
    both = runner.invoke(app, ["train", str(tmp_path), "--model", "m", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "not both" in both.output
    no_hook = runner.invoke(app, ["train", "--model", "m", "--out", str(tmp_path / "x")])
    assert no_hook.exit_code == 2 and "training on the fly needs --hook NAME" in no_hook.output
    small = ["--model", str(tiny_model_folder), "--dataset", str(text_corpus), "--out", str(tmp_path / "x")]
    bad_hook = runner.invoke(app, ["train", *small, "--hook", "blocks.9.hook_resid_post"])
    assert bad_hook.exit_code == 2 and "layer 9 is out of range, the model has 3 layers" in bad_hook.output
    args = [
        "train", "--model", str(tiny_model_folder), "--dataset", str(text_corpus), "--hook", HOOK,
        "--tokens", "256", "--context-length", "16", "--forward-rows", "4", "--batch-size", "32", "--buffer", "64",
        "--arch", "sae_topk", "--latents", "16", "--set", "sae_topk.k=4", "--device", "cpu", "--quiet",
        "--out", str(tmp_path / "cli"),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sae_topk: fraction of LM loss recovered" in result.output
    assert json.loads((tmp_path / "cli" / "train_config.json").read_text())["steps_per_epoch"] == [8]  # 1 epoch
    meta = json.loads((tmp_path / "cli" / "sae_topk" / "config.json").read_text())["metadata"]
    assert meta["model_name"] == str(tiny_model_folder) and meta["on_the_fly"]["tokens"] == 256
