"""benchmarks/quality_vs_saelens.py: its pure helpers (batch order, pairing, frontier interpolation, RESULT line)."""

import argparse
import math
from pathlib import Path

import pytest
import torch

import dictionaries as D
from benchmarks.quality_vs_saelens import (
    batch_order,
    best_learning_rate,
    dictionary_name,
    epochs_for,
    interpolate_fvu,
    learning_rates,
    norm_cap,
    our_configs,
    ours_folder,
    output_name,
    pair_up,
    result_line,
    split_by_norm,
    summarise,
    variance_share,
    verdict,
)


def test_batch_order_is_the_tensor_batch_source_order():
    data = torch.randn(103, 3)
    source = D.TensorBatchSource(data, 10, seed=7)
    order = batch_order(103, 10, epochs=3, seed=7)
    expected = torch.cat([batch for epoch in range(3) for batch in source.batches(epoch)])
    assert order.shape == (3 * 10 * 10,)
    assert torch.equal(data[order], expected)


def test_epochs_for_reaches_the_token_budget():
    assert epochs_for(1000, 100, 0) == 1
    assert epochs_for(1050, 100, 1000) == 1  # whole batches: 1000 per epoch
    assert epochs_for(1050, 100, 1001) == 2
    with pytest.raises(ValueError):
        epochs_for(50, 100, 10)


def test_interpolate_fvu_is_log_linear_inside_the_frontier_only():
    frontier = [(64.0, 0.1), (16.0, 0.4), (32.0, 0.2)]
    assert interpolate_fvu(frontier, 16.0) == pytest.approx(0.4)
    assert interpolate_fvu(frontier, 64.0) == pytest.approx(0.1)
    assert interpolate_fvu(frontier, math.sqrt(16 * 32)) == pytest.approx(math.sqrt(0.4 * 0.2))
    assert interpolate_fvu(frontier, 8.0) is None
    assert interpolate_fvu(frontier, 100.0) is None
    assert interpolate_fvu([(32.0, 0.2)], 32.0) == 0.2


def _row(family, l0, fvu, dead=0.0, loss=None):
    return {"family": family, "l0": l0, "fvu": fvu, "dead": dead, "loss_recovered": loss}


def test_pairs_flag_unmatched_l0_and_the_summary_leaves_them_out():
    rows = {
        dictionary_name("ours", "topk", 16): _row("topk", 16.0, 0.30, dead=0.01, loss=0.9),
        dictionary_name("ours", "topk", 32): _row("topk", 32.0, 0.20, dead=0.02, loss=0.95),
        dictionary_name("saelens", "topk", 16): _row("topk", 16.0, 0.32, dead=0.40, loss=0.8),
        dictionary_name("saelens", "topk", 32): _row("topk", 32.0, 0.21, dead=0.30, loss=0.9),
        dictionary_name("ours", "jumprelu", 16): _row("jumprelu", 16.0, 0.35),
        dictionary_name("saelens", "jumprelu", 16): _row("jumprelu", 24.0, 0.25),  # 33% apart: flagged
        dictionary_name("ours", "vaease"): _row("vaease", 40.0, 0.5, dead=0.9),  # plot only: no pair, no dead count
    }
    pairs = pair_up(rows, [16, 32])
    assert [(p["family"], p["k"], p["matched"]) for p in pairs] == [
        ("topk", 16, True),
        ("topk", 32, True),
        ("jumprelu", 16, False),
    ]
    topk16 = pairs[0]
    assert topk16["fvu_ratio"] == pytest.approx(0.30 / 0.32)
    assert topk16["fvu_ratio_interp"] == pytest.approx(0.30 / 0.32)  # on the SAELens frontier's point
    assert pairs[2]["fvu_ratio_interp"] is None  # our L0 16 is outside SAELens's one-point frontier at 24
    summary = summarise(rows, pairs)
    assert summary["worst_fvu_ratio"] == pytest.approx(0.20 / 0.21)
    assert summary["worst_pair"] == "topk-k32"
    assert summary["worst_fvu_ratio_all"] == pytest.approx(0.35 / 0.25)
    assert (summary["pairs"], summary["matched_pairs"], summary["flagged_pairs"]) == (3, 2, 1)
    assert [p["verdict"] for p in pairs] == ["ours", "ours", "undecided"]  # lower L0 but higher FVU: undecided
    assert (summary["pairs_won"], summary["pairs_lost"], summary["pairs_undecided"]) == (2, 0, 1)
    assert summary["max_dead_fraction"] == 0.02  # ours, modern families only
    assert summary["saelens_max_dead_fraction"] == 0.40
    assert summary["min_loss_recovered_ours"] == 0.9
    assert summary["targets_met"] is True


def test_an_unmatched_pair_is_decided_only_by_dominance():
    base = {"matched": False, "l0_ours": 20.0, "l0_saelens": 200.0}
    assert verdict({**base, "fvu_ours": 0.5, "fvu_saelens": 5.0}) == "ours"
    assert verdict({**base, "fvu_ours": 0.5, "fvu_saelens": 0.4}) == "undecided"
    assert verdict({**base, "l0_ours": 300.0, "fvu_ours": 0.5, "fvu_saelens": 0.4}) == "saelens"
    assert verdict({**base, "matched": True, "fvu_ours": 0.5, "fvu_saelens": 0.4}) == "saelens"


def test_summary_without_matched_pairs_misses_the_target():
    rows = {
        dictionary_name("ours", "batchtopk", 32): _row("batchtopk", 32.0, 0.2),
        dictionary_name("saelens", "batchtopk", 32): _row("batchtopk", 60.0, 0.15),
    }
    summary = summarise(rows, pair_up(rows, [32]))
    assert summary["worst_fvu_ratio"] is None
    assert summary["targets_met"] is False
    line = result_line(summary, {"width": 1024})
    assert line.startswith("RESULT worst_fvu_ratio=none max_dead_fraction=0 pairs=1 ")
    assert line.endswith(" width=1024")


def test_learning_rates_are_our_schedule_step_by_step():
    schedule, lrs = learning_rates(1e-3, 40, 0.05)
    assert schedule.kind == "warmup_cosine" and schedule.warmup_steps == 2
    assert lrs == [D.learning_rate(schedule, 1e-3, step, 40) for step in range(40)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)


def test_massive_activations_are_split_off_by_norm_in_order():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0], [0.0, -1.0], [-6.0, 8.0]])
    cap = norm_cap(vectors, 3.0)
    assert cap == pytest.approx(3.0 * 2.0)  # median norm 2
    typical, outliers = split_by_norm(vectors, cap)
    assert torch.equal(typical, vectors[[0, 1, 3]]) and torch.equal(outliers, vectors[[2, 4]])
    assert norm_cap(vectors, 0.0) is None
    kept, none = split_by_norm(vectors, None)
    assert torch.equal(kept, vectors) and none.shape == (0, 2)


def test_variance_share_is_the_outliers_part_of_the_centred_sum_of_squares():
    typical, outliers = torch.tensor([[1.0], [-1.0]]), torch.tensor([[3.0]])  # mean 1: squares 0, 4, 4
    assert variance_share(typical, outliers) == pytest.approx(0.5)
    assert variance_share(typical, typical[:0]) == 0.0


def test_each_tool_keeps_the_learning_rate_nearest_its_target_then_healthy_then_best():
    def row(fvu, dead, l0=64.0, k=64):
        return {"fvu": fvu, "dead": dead, "l0": l0, "k": k}

    rows_by_lr = {
        5e-3: {
            "ours/topk-k64": row(0.158, 0.00),
            "saelens/topk-k64": row(0.155, 0.31),
            "saelens/jumprelu-k32": row(0.083, 0.01, l0=290.0, k=32),
            "ours/vaease": row(0.3, 0.8, l0=40.0, k=None),
        },
        1e-2: {
            "ours/topk-k64": row(0.147, 0.087),
            "saelens/topk-k64": row(0.160, 0.40),
            "saelens/jumprelu-k32": row(0.203, 0.24, l0=36.8, k=32),
            "ours/vaease": row(0.2, 0.9, l0=35.0, k=None),
        },
        2e-2: {"ours/topk-k64": row(0.157, 0.01)},  # a dictionary missing at one lr is judged on the others
    }
    best = best_learning_rate(rows_by_lr)
    assert list(best) == ["ours/topk-k64", "saelens/topk-k64", "saelens/jumprelu-k32", "ours/vaease"]
    assert best["ours/topk-k64"] is rows_by_lr[2e-2]["ours/topk-k64"]  # 1e-2's is better but 8.7% dead
    assert best["saelens/topk-k64"] is rows_by_lr[5e-3]["saelens/topk-k64"]  # none healthy: the lowest FVU
    # neither is within 5% of L0 32: the closer one, though its FVU is worse and a quarter of it is dead
    assert best["saelens/jumprelu-k32"] is rows_by_lr[1e-2]["saelens/jumprelu-k32"]
    assert best["ours/vaease"] is rows_by_lr[1e-2]["ours/vaease"]  # no target L0: the lowest FVU


def test_a_race_of_some_families_trains_only_them_into_its_own_folder():
    every = argparse.Namespace(families=["topk", "batchtopk", "matryoshka", "jumprelu"], ks=[16, 32], width=64)
    some = argparse.Namespace(families=["jumprelu"], ks=[16, 32], width=64)
    assert sorted(our_configs(every, d=8)) == sorted(
        [f"{f}-k{k}" for f in every.families for k in every.ks] + ["vaease", "wsae"]
    )
    jumprelus = our_configs(some, d=8)
    assert sorted(jumprelus) == ["jumprelu-k16", "jumprelu-k32"]
    assert jumprelus["jumprelu-k32"].target_l0 == 32.0
    run = Path("runs/x")
    assert (ours_folder(every, run), ours_folder(some, run)) == (run / "ours", run / "ours-jumprelu")
    assert (output_name(every, "results", ".json"), output_name(some, "results", ".json")) == (
        "results.json",
        "results-jumprelu.json",
    )
