"""The trainer: learning, several dictionaries on one stream, NaN stops, resume."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dictionaries as D
from dictionaries.checkpoint import load_checkpoint
from dictionaries.data import within_norm
from dictionaries.trainer import TRAIN_LOCK_FILE
from interp_sae.deferred_interrupt import InterruptRequest
from interp_sae.folder_lock import exclusive_folder

QUIET = dict(progress=False, log_every=10_000, checkpoint_every=0)


def subspace_data(n, d=8, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, dim, generator=g))[0]
    return torch.randn(n, dim, generator=g) @ basis.T


def read_log(out_dir, event):
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.slow
def test_vaease_lowers_the_loss_and_finds_the_subspace_dimension(tmp_path):
    train, test = D.train_test_split(subspace_data(6000), 0.1)
    config = D.TrainConfig(
        epochs=16, lr=1e-2, schedule=D.ScheduleConfig(kind="constant"), progress=False, log_every=42, checkpoint_every=0
    )
    result = D.train(
        {"vaease": D.make_config("vaease", d=8, n_latents=6, init_log_gamma=-0.5)},
        D.TensorBatchSource(train, 128),
        tmp_path,
        config,
        D.TensorBatchSource(test, 200, shuffle=False),
    )
    losses = [r["loss"] for r in read_log(tmp_path, "train")]
    assert losses[-1] < losses[0] - 5
    metrics = result.metrics["vaease"]
    assert metrics["split"] == "held_out" and metrics["fvu_deterministic"] < 0.05
    assert abs(metrics["ad_mean"] - 2) < 0.5  # the data live in a 2-dimensional subspace
    saved = json.loads((tmp_path / "vaease" / "metrics.json").read_text())
    assert saved["ad_mean"] == metrics["ad_mean"]
    assert (tmp_path / "vaease" / "ad_re_curve.csv").read_text().startswith("k,re_deterministic")
    assert (tmp_path / "ad_re_curves.png").stat().st_size > 0


def test_dictionaries_on_one_stream_train_as_if_alone(tmp_path):
    data = subspace_data(512)
    a = D.create(D.make_config("sae_l1", d=8, n_latents=6), seed=0)
    b = D.create(D.make_config("sae_topk", d=8, n_latents=6, k=2), seed=1)
    alone = D.create(D.make_config("sae_l1", d=8, n_latents=6), seed=0)
    config = D.TrainConfig(epochs=2, **QUIET)
    D.train({"a": a, "b": b}, D.TensorBatchSource(data, 64), tmp_path / "both", config)
    D.train({"a": alone}, D.TensorBatchSource(data, 64), tmp_path / "alone", config)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), alone.parameters()))
    assert D.load_dictionary(tmp_path / "both" / "b").config.k == 2


def test_input_normalisation_is_stored_in_the_dictionary(tmp_path):
    data = subspace_data(512) * 40
    config = D.TrainConfig(epochs=1, normalize_input=True, **QUIET)
    result = D.train({"s": D.make_config("sae_l1", d=8, n_latents=6)}, D.TensorBatchSource(data, 64), tmp_path, config)
    model = result.dictionaries["s"]
    sample = D.take_vectors(D.TensorBatchSource(data, 64), config.prepare_vectors)
    assert float((sample * model.input_scale).norm(dim=1).mean()) == pytest.approx(8**0.5, rel=1e-5)
    loaded = D.load_dictionary(tmp_path / "s")
    assert torch.equal(loaded(data), model(data)) and torch.equal(loaded.input_scale, model.input_scale)


class PoisonedSource:
    """Good batches, then a NaN batch at index `bad`."""

    def __init__(self, bad):
        self.inner, self.bad, self.d = D.TensorBatchSource(subspace_data(640), 64, seed=0), bad, 8

    def num_batches(self, epoch):
        return self.inner.num_batches(epoch)

    def batches(self, epoch, start=0):
        for i, batch in enumerate(self.inner.batches(epoch, start), start=start):
            yield batch * float("nan") if (epoch, i) == (0, self.bad) else batch


def test_max_norm_ratio_leaves_massive_activations_out_of_training_and_evaluation(tmp_path):
    data = torch.nn.functional.normalize(subspace_data(512), dim=1)
    data[::64] *= 100  # 8 massive activations among unit vectors
    cap = 3.0 * float(data.norm(dim=1).median())
    kept = data[data.norm(dim=1) <= cap]
    assert kept.shape[0] == 504
    model = D.create(D.make_config("topk_aux", d=8, n_latents=16, k=2), seed=0)
    seen = []
    loss = model.loss
    model.loss = lambda x, generator=None: seen.append(x.norm(dim=1).max()) or loss(x, generator)
    config = D.TrainConfig(epochs=1, normalize_input=True, max_norm_ratio=3.0, prepare_vectors=512, **QUIET)

    result = D.train({"sae": model}, D.TensorBatchSource(data, 64, seed=0), tmp_path, config)

    assert len(seen) == 8 and max(seen) <= cap
    assert float(model.input_scale) == pytest.approx(8**0.5 / float(kept.norm(dim=1).mean()), rel=1e-6)
    assert result.metrics["sae"]["n_vectors"] == 504  # evaluated on the train source, capped alike
    saved = D.load_dictionary(tmp_path / "sae")
    assert saved.metadata["max_input_norm"] == pytest.approx(cap, rel=1e-6)
    again = D.train(
        {"sae": D.make_config("topk_aux", d=8, n_latents=16, k=2)}, D.TensorBatchSource(data, 64), tmp_path, config
    )
    assert again.metrics["sae"]["n_vectors"] == 504  # the restored run keeps its cap
    # Scored on its own, the saved dictionary leaves out what it was trained without, as its trainer did.
    alone = D.evaluate(saved, D.TensorBatchSource(data, 64, shuffle=False))
    assert (alone["n_vectors"], alone["n_left_out"]) == (504, 8)
    assert alone["fvu_deterministic"] == pytest.approx(result.metrics["sae"]["fvu_deterministic"], rel=1e-5)
    every = D.evaluate(saved, D.TensorBatchSource(data, 64, shuffle=False), max_norm=math.inf)
    assert (every["n_vectors"], every["n_left_out"]) == (512, 0)
    with pytest.raises(ValueError, match=r"every vector evaluated \(8\) is longer than the cap .* max_norm=math.inf"):
        D.evaluate(saved, D.TensorBatchSource(data[::64], 8, shuffle=False))
    with pytest.raises(ValueError, match="max_norm_ratio must be positive"):
        D.TrainConfig(max_norm_ratio=0.0)


def test_a_batch_of_nothing_but_massive_activations_stops_with_what_to_do(tmp_path):
    data = torch.nn.functional.normalize(subspace_data(120), dim=1)
    data[40:80] *= 100  # the whole second batch
    config = D.TrainConfig(epochs=1, max_norm_ratio=3.0, **QUIET)
    source = D.TensorBatchSource(data, 40, shuffle=False)
    with pytest.raises(ValueError, match="batch 1 of epoch 0 holds only vectors longer than the norm cap 3: raise"):
        D.train({"sae": D.make_config("topk_aux", d=8, n_latents=16, k=2)}, source, tmp_path, config)


def test_the_norm_cap_keeps_rows_whose_norm_is_not_a_number():
    x = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [10.0, 0.0], [0.0, 2.0]])
    assert torch.equal(within_norm(x, 3.0)[[0, 2]], x[[0, 3]])
    assert within_norm(x, 3.0)[1].isnan().any() and within_norm(x, None) is x


def test_nan_stops_training_naming_step_and_term_and_keeps_the_checkpoint(tmp_path):
    config = D.TrainConfig(epochs=1, progress=False, log_every=100, checkpoint_every=2)
    with pytest.raises(D.NonFiniteLossError) as error:
        D.train({"s": D.make_config("sae_l1", d=8, n_latents=6)}, PoisonedSource(bad=5), tmp_path, config)
    message = str(error.value)
    assert "step 5 (epoch 0, batch 5), dictionary 's'" in message
    assert "'recon': nan" in message and "'sparsity': nan" in message and "decoder_l2" not in message
    assert "last good checkpoint" in message and "(step 4)" in message
    tensors, state = load_checkpoint(tmp_path / D.trainer.CHECKPOINT_FILE)
    assert state["step"] == 4 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert read_log(tmp_path, "nonfinite_loss")[0]["step"] == 5


class InterruptedSource:
    """Raises after `limit` batches, standing in for a kill."""

    def __init__(self, inner, limit):
        self.inner, self.limit, self.d, self.count = inner, limit, inner.d, 0

    def num_batches(self, epoch):
        return self.inner.num_batches(epoch)

    def batches(self, epoch, start=0):
        for batch in self.inner.batches(epoch, start):
            if self.count == self.limit:
                raise KeyboardInterrupt
            self.count += 1
            yield batch


ALL_ARCHS = {
    "vaease": {"init_log_gamma": -0.5},
    "vae": {"encoder": "mlp", "encoder_layers": 2},
    "sae_l1": {},
    "sae_log": {},
    "sae_topk": {"k": 2},
    "wsae": {"estimator": "kurtosis"},
    "topk_aux": {"k": 2, "aux_k": 3, "dead_after_tokens": 32},
}


@pytest.mark.slow
def test_resume_in_process_equals_uninterrupted_for_every_architecture(tmp_path):
    configs = {a: D.make_config(a, d=8, n_latents=6, **f) for a, f in ALL_ARCHS.items()}
    source = D.TensorBatchSource(subspace_data(640), 64, seed=3)
    config = D.TrainConfig(epochs=3, progress=False, log_every=100, checkpoint_every=4, prepare_vectors=64)
    with pytest.raises(KeyboardInterrupt):  # 1 batch for preparation, 16 steps, checkpoint at 16
        D.train(configs, InterruptedSource(source, 17), tmp_path / "resumed", config)
    resumed = D.train(configs, source, tmp_path / "resumed", config)
    straight = D.train(configs, source, tmp_path / "straight", config)
    assert read_log(tmp_path / "resumed", "resume")[0]["step"] == 16
    for name in configs:
        for (key, a), b in zip(
            resumed.dictionaries[name].state_dict().items(), straight.dictionaries[name].state_dict().values()
        ):
            assert torch.equal(a, b), (name, key)
        assert resumed.metrics[name] == straight.metrics[name]


class CtrlCSource(InterruptedSource):
    """Sends this process a SIGINT (Ctrl-C) before its `limit`-th batch."""

    @property
    def batch_size(self):  # so the run is planned as the rerun on the plain source is
        return self.inner.batch_size

    def batches(self, epoch, start=0):
        for batch in self.inner.batches(epoch, start):
            if self.count == self.limit:
                os.kill(os.getpid(), signal.SIGINT)
            self.count += 1
            yield batch


def test_ctrl_c_saves_the_step_it_stopped_at_and_the_rerun_ends_where_an_uninterrupted_run_ends(tmp_path):
    configs = {a: D.make_config(a, d=8, n_latents=6, k=2) for a in ("topk_aux", "matryoshka")}
    source = D.TensorBatchSource(subspace_data(640), 64, seed=3)
    config = D.TrainConfig(epochs=3, progress=False, log_every=100, checkpoint_every=1000, prepare_vectors=64)
    with pytest.raises(KeyboardInterrupt):  # no periodic checkpoint before it: only the interrupt's
        D.train(configs, CtrlCSource(source, 12), tmp_path / "resumed", config)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    resumed = D.train(configs, source, tmp_path / "resumed", config)
    straight = D.train(configs, source, tmp_path / "straight", config)
    # 1 preparation batch and 11 steps before the signal; the step it came during is finished and saved
    assert read_log(tmp_path / "resumed", "resume")[0]["step"] == 12
    for name in configs:
        for a, b in zip(
            resumed.dictionaries[name].state_dict().values(), straight.dictionaries[name].state_dict().values()
        ):
            assert torch.equal(a, b), name


def test_a_second_ctrl_c_stops_at_once():
    request = InterruptRequest()
    request.handle(signal.SIGINT, None)
    assert request.requested
    with pytest.raises(KeyboardInterrupt):
        request.handle(signal.SIGINT, None)


def test_resume_refuses_a_different_run(tmp_path):
    source = D.TensorBatchSource(subspace_data(256), 64)
    D.train({"s": D.make_config("sae_l1", d=8, n_latents=6)}, source, tmp_path, D.TrainConfig(epochs=1, **QUIET))
    with pytest.raises(ValueError, match="belongs to a run with different dictionaries; use a new out_dir"):
        D.train({"s": D.make_config("sae_l1", d=8, n_latents=7)}, source, tmp_path, D.TrainConfig(epochs=1, **QUIET))


def test_a_second_run_into_a_busy_folder_is_refused_and_changes_nothing(tmp_path):
    source = D.TensorBatchSource(subspace_data(256), 64)
    config = {"s": D.make_config("sae_l1", d=8, n_latents=6)}
    D.train(config, source, tmp_path, D.TrainConfig(epochs=1, **QUIET))

    def snapshot():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != TRAIN_LOCK_FILE}

    before = snapshot()
    # Holding the lock on another open file is what a second process does: flock refuses it alike.
    with exclusive_folder(tmp_path, TRAIN_LOCK_FILE, lambda holder: AssertionError("the lock was free")):
        with pytest.raises(
            D.RunBusyError, match=rf"another training run \(pid {os.getpid()}\) is writing to {tmp_path}"
        ):
            D.train(config, source, tmp_path, D.TrainConfig(epochs=1, **QUIET))
    assert snapshot() == before
    assert D.train(config, source, tmp_path, D.TrainConfig(epochs=1, **QUIET)).steps == 4  # free again: it resumes


def run_script(out_dir, *kill):
    script = Path(__file__).with_name("resume_run.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, str(script), str(out_dir), *map(str, kill)], env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert run_script(out).returncode == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_on, resumed_from", [("checkpoint-written", 20), ("checkpoint-renamed", 30)])
def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(
    tmp_path, uninterrupted_run, kill_on, resumed_from
):
    killed = run_script(tmp_path, kill_on, 3)  # during/after the 3rd checkpoint write (steps 10, 20, 30)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _, state = load_checkpoint(tmp_path / D.trainer.CHECKPOINT_FILE)
    assert state["step"] == resumed_from  # a half-written checkpoint is never the one in place

    assert run_script(tmp_path).returncode == 0
    assert read_log(tmp_path, "resume")[0]["step"] == resumed_from
    assert not list(tmp_path.glob(".*.tmp*")), "the killed run's temporary checkpoint was left behind"
    for name in ("vaease", "sae_l1", "topk_aux"):
        a = load_file(tmp_path / name / "model.safetensors")
        b = load_file(uninterrupted_run / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
