"""Batch sources and learning-rate schedules."""

import pytest
import torch

import dictionaries as D


def test_tensor_source_is_deterministic_per_epoch_and_skips():
    data = torch.arange(40.0).reshape(20, 2)
    source = D.TensorBatchSource(data, 3, seed=5)
    assert isinstance(source, D.BatchSource) and source.num_batches(0) == 6
    epoch0 = list(source.batches(0))
    assert all(torch.equal(a, b) for a, b in zip(epoch0, source.batches(0)))
    assert all(torch.equal(a, b) for a, b in zip(epoch0[4:], source.batches(0, start=4)))
    assert not torch.equal(torch.cat(epoch0), torch.cat(list(source.batches(1))))
    seen = torch.cat(epoch0)[:, 0].tolist()
    assert len(set(seen)) == 18  # a permutation, last partial batch dropped


def test_unshuffled_source_keeps_order_and_last_batch():
    data = torch.arange(10.0).reshape(5, 2)
    batches = list(D.TensorBatchSource(data, 2, shuffle=False, drop_last=False).batches(0))
    assert [b.shape[0] for b in batches] == [2, 2, 1] and torch.equal(torch.cat(batches), data)


def test_train_test_split_partitions():
    data = torch.arange(100.0)[:, None]
    train, test = D.train_test_split(data, 0.1, seed=0)
    assert len(test) == 10 and sorted(torch.cat([train, test])[:, 0].tolist()) == data[:, 0].tolist()


def test_take_vectors():
    source = D.TensorBatchSource(torch.arange(20.0)[:, None], 4, shuffle=False)
    assert D.take_vectors(source, 6)[:, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_cosine_warm_restarts_matches_pytorch_stepped_per_batch():
    config = D.ScheduleConfig(kind="cosine_warm_restarts", t0=5, t_mult=2, min_lr=1e-6)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=5e-3)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=5, T_mult=2, eta_min=1e-6)
    for step in range(200):
        assert D.learning_rate(config, 5e-3, step, 200) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        reference.step()


def test_warmup_schedules():
    config = D.ScheduleConfig(kind="warmup_cosine", warmup_steps=4, min_lr=0.0)
    lrs = [D.learning_rate(config, 1.0, s, 14) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    constant = D.ScheduleConfig(kind="warmup_constant", warmup_steps=2)
    assert [D.learning_rate(constant, 1.0, s, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_a_rank_takes_its_equal_slice_and_an_uneven_batch_whole():
    from dictionaries.distributed import Cluster

    second_of_two = Cluster(rank=1, world_size=2)
    assert second_of_two.local_slice(torch.arange(6)).tolist() == [3, 4, 5]
    assert second_of_two.local_slice(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]  # never empty or uneven
    assert Cluster().local_slice(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]
