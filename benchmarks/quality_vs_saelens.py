"""A quality race: our TopK-family and JumpReLU dictionaries against SAELens's, on the same real activations.

    python benchmarks/quality_vs_saelens.py [--small] [--out runs/quality_vs_saelens] [--venv /tmp/saelens-venv]
                                            [--width 2048] [--ks 16 32 64] [--lr 5e-3 7e-3 1e-2] [--device auto]

Data. SmolLM2-135M (the offline `builtin:smollm2`), `blocks.15.hook_resid_post`, on the built-in
Python-docs corpus, context 128, harvested (or resumed) into OUT/store. That corpus holds about
447k tokens (463 documents), so the full run's 600k-token budget stops at its end (~450k vectors);
the train side of the store's held-out split (whole documents, the default `Split()`) is then seen
for as many epochs as `--min-train-tokens` (500k) needs: 2, about 800k training tokens of which
about 400k are distinct (estimates: the full run was not made on this machine).
The train side and the held-out side (via `store.iter_split`) are written to two plain safetensors
files of float32 vectors, with the exact order of every training batch: ours read them through
`D.TensorBatchSource`, and SAELens (in its own venv, this same file run with `--child`) reads the
same vectors in the same batches, so both tools see the same tokens, in the same order, with the
same batch size, the same number of steps and the same learning rate at every step.

Massive activations. A few vectors of this hook are 10-100× longer than the rest: the first
document token of some rows (position 1, after BOS): 84 of the ~417k train vectors and 12 of the
~30k held-out ones are over 3× the median norm (~170), with norms up to ~17,000. Those 12 carry 72% of the
held-out variance, so an FVU over them mostly measures how 12 tokens are reconstructed (in the
full run without this filter, 19% of our TopK k = 32's squared error was on them), and in training
one of them in a batch takes hundreds of a batch top-k's k·B slots (our BatchTopK k = 32, 202
steps: FVU on the typical held-out vectors 0.255 trained with them, 0.183 without; our TopK 0.187).
So by default (--max-norm-ratio 3) the vectors longer than 3× the train side's median norm are left
out of both tools' training and scoring, as BOS is, and the loss-recovered runs leave them
un-spliced and un-ablated (`loss_recovered(max_norm=...)`). Each row keeps `fvu_with_outliers`, the
FVU with them, for the record; --max-norm-ratio 0 keeps every vector.

Dictionaries, each tool with its own recommended recipe at the same width:
- ours (`dictionaries.train`, one run, every dictionary on the same batches): topk_aux, batchtopk,
  matryoshka with k ∈ --ks, and jumprelu with target_l0 = k (the quadratic target-L0 penalty),
  all at their config defaults, with `TrainConfig(normalize_input=True)` (jumprelu's defaults assume
  it); plus VAEase (initial log γ −2, the CPU-budget setting of the demo) and the weighted SAE (its
  defaults) for the frontier plot only (AD as their L0).
- SAELens (its own `SAETrainer`, i.e. its Adam, gradient clipping at norm 1, coefficient warm-ups and
  dead-latent window, fed by the saved batches): `TopKTrainingSAE`, `BatchTopKTrainingSAE`,
  `MatryoshkaBatchTopKTrainingSAE` (its documented widths [d_sae/4, d_sae/2, d_sae]) with k, all
  other fields at SAELens's defaults; `JumpReLUTrainingSAE` with SAELens's documented quadratic
  recipe (jumprelu_sparsity_loss_mode="quadratic", target_l0=k, l0_coefficient=5, bandwidth 0.01,
  initial threshold 0.01, normalize_activations="expected_average_only_in"; its scaling factor is
  estimated with SAELens's own function on the first training batches, as its trainer would).
  Each is saved with `save_inference_model` and imported with `interp_sae.saelens.import_saelens`;
  the child also runs SAELens's own inference SAE on the first held-out vectors, and the parent
  checks that the imported dictionary gives the same reconstruction (`import_max_rel_diff`).
- Learning rate, swept: both tools train at every --lr (full run 5e-3, 7e-3 and 1e-2, --small 5e-3
  and 1e-2; each its own run folder), Adam with a linear warm-up over 5% of the steps, then cosine
  decay to lr/10 (our `warmup_cosine`; SAELens's optimiser gets the same per-step values). Each dictionary is then
  taken at the lr its tool does best with (`best_learning_rate`), by one rule for both tools: the
  runs whose held-out L0 is within ±5% of k (else the one closest to k), of those the ones with at
  most 5% of their latents dead (if any), of those the lowest held-out FVU. It picks on the
  held-out figures it then reports, so both sides' figures are a little optimistic, alike.

Evaluation, one function for both: `dictionaries.evaluate` on the same held-out vectors (centred
FVU, L0, dead fraction = latents never active on them) and `interp_sae.splice.loss_recovered`
(SmolLM2 loaded once; rows of held-out documents). Pairs (ours vs SAELens, same family, same k)
whose held-out L0 differ by more than ±5% are reported but flagged, and left out of
worst_fvu_ratio (they are still in worst_fvu_ratio_all). worst_fvu_ratio_interp compares each of
ours with the SAELens frontier of the same family interpolated (log–log) at our L0.

Outputs in OUT: results.json, frontier.png (FVU vs L0 of every dictionary; with `--families`,
results-FAMILIES.json and frontier-FAMILIES.png); trained dictionaries
in OUT/runs/TAG/. Last line: RESULT worst_fvu_ratio=... max_dead_fraction=... pairs=... ...
Targets: worst_fvu_ratio ≤ 1.0 and max_dead_fraction ≤ 0.05 (our modern dictionaries).

`--small`: width 1024, batch 1024, a 40,960-token store, one epoch (35 steps), 4096 held-out
vectors, loss recovered on 2 rows and only at k = 32. A smoke test of the whole pipeline, not a
verdict: at 35 steps neither tool is trained. Measured from nothing (no store) on 2 lightly loaded
CPU cores: 3 min 39 s (model load + harvest 78 s, our training 65 s, SAELens 43 s including its
import, scoring 19 s); on the same cores shared with other jobs (load ~6) the harvest alone took
3.3 min, so expect up to ~8 min. Building the SAELens venv the first time adds about 6 minutes.
Reruns reuse the store and the trained dictionaries (OUT/runs/TAG, one per lr, keyed by the
settings) and only score again. The full run (~200 steps of 4096 at width 2048, 26 dictionaries, loss recovered on 64
rows) takes hours on such a CPU; the SAELens venv holds the CPU build of torch, so its side runs on
the CPU even where ours has a GPU.

Where the comparison can be unfair (read the numbers with these in mind):
- Two learning rates only. At short budgets the ranking moves with the lr: SAELens starts from a
  0.1-norm decoder and gains most from a high lr (--small, k = 32, TopK FVU ours/SAELens:
  lr 1e-3 0.58/1.53, 2e-3 0.47/0.88, 5e-3 0.37/0.43, 1e-2 0.34/0.36); ours at 1e-2 can lose
  latents (full run, TopK k = 64: FVU 0.147 with 8.7% dead, against 0.158 and 0% at 5e-3), which
  the selection rule then refuses. A finer sweep would serve both tools.
- Short runs hurt the estimated inference thresholds: SAELens's BatchTopK/Matryoshka threshold is an
  EMA that starts at 0 with rate 0.01 (≈30% converged after 35 steps, ≈86% after 200), so its
  inference L0 is far above k (--small: ~170-310, FVU > 1); ours starts at the first batch's value
  and follows the weights at rate 0.1 (at 0.01 it lagged: k = 64 gave L0 48.5 after 180 steps).
  Pairs whose L0s differ by more than 5% are flagged (L0 not matched) and left out of
  worst_fvu_ratio; an unmatched pair is won only by the side with both the lower L0 and the lower
  FVU (`pairs_won`/`pairs_lost`/`pairs_undecided`).
- JumpReLU: both use a quadratic target-L0 penalty and train θ directly (ours from 0.001, SAELens's
  from 0.01), and Adam moves θ by at most about lr per step, while θ must reach about 1.3-1.6 for
  L0 = 16 here (SmolLM2 layer 15 at mean norm √d). So neither gets near L0 = k in a few hundred steps
  (--small: ours ~400, SAELens ~300 for every k) and the JumpReLU pairs are flagged. A larger λ
  does not help (Adam's step does not grow with the gradient), and starting θ at each latent's
  L0*/κ quantile of the data overshot the other way (L0 fell to ~0.6 of the target, 20% of the
  latents died, in 90 steps).
- Recipes differ on purpose (each tool's defaults): SAELens clips gradients at norm 1, does not
  normalise inputs for TopK-family SAEs, initialises b_dec at 0 and the decoder at norm 0.1 with
  rescale_acts_by_decoder_norm; ours normalises inputs, starts b_dec at the data mean and keeps unit-norm
  decoder columns. SAELens's AuxK stays idle here (its dead window, 1000 steps, is longer than the
  runs); ours calls a latent dead after a 32nd of the run's tokens without firing (its default for
  runs under 320M tokens; 25,856 tokens, about 6 steps, in the full run).
- Dead fraction is "never active on the held-out vectors": with 4096 of them (--small) rare latents
  count as dead; the same for both tools. Loss recovered on 2 rows (--small) is noise.
- The corpus is small (~447k tokens of Python docs), so the full run sees its train side twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOOK = "blocks.15.hook_resid_post"
L0_TOLERANCE = 0.05  # a pair is matched when its two held-out L0s differ by at most 5%
FVU_TARGET, DEAD_TARGET = 1.0, 0.05
CHECK_VECTORS = 512  # held-out vectors on which SAELens's own SAE and our import of it are compared
# family -> (our architecture, SAELens training architecture)
FAMILIES = {
    "topk": ("topk_aux", "topk"),
    "batchtopk": ("batchtopk", "batchtopk"),
    "matryoshka": ("matryoshka", "matryoshka_batchtopk"),
    "jumprelu": ("jumprelu", "jumprelu"),
}
PLOT_ONLY = {"vaease": {"init_log_gamma": -2.0}, "wsae": {}}  # our other families: on the plot, AD as L0
SAELENS_JUMPRELU = {  # SAELens's documented quadratic-L0 recipe (docs/training_saes.md), target_l0 added per k
    "jumprelu_sparsity_loss_mode": "quadratic",
    "l0_coefficient": 5.0,
    "jumprelu_bandwidth": 0.01,
    "jumprelu_init_threshold": 0.01,
    "normalize_activations": "expected_average_only_in",
}
PRESETS = {  # option -> (full, small)
    "tokens": (600_000, 40_960),
    "width": (2048, 1024),
    "batch_size": (4096, 1024),
    "min_train_tokens": (500_000, 0),
    "max_train_vectors": (0, 36_864),
    "heldout_vectors": (65_536, 4096),
    "loss_rows": (64, 2),
    "loss_ks": (None, [32]),
    "lr": ([5e-3, 7e-3, 1e-2], [5e-3, 1e-2]),
}


# --- pure helpers (tested in tests/test_quality_benchmark.py) ---------------------------------------------------


def dictionary_name(tool: str, family: str, k: int | None = None) -> str:
    """'ours/topk-k32', 'saelens/jumprelu-k16', 'ours/vaease'."""
    return f"{tool}/{family}" if k is None else f"{tool}/{family}-k{k}"


def epochs_for(vectors: int, batch_size: int, min_tokens: int) -> int:
    """Epochs over `vectors` (whole batches only) so that steps × batch_size ≥ min_tokens (at least 1)."""
    per_epoch = (vectors // batch_size) * batch_size
    if per_epoch == 0:
        raise ValueError(f"{vectors} training vectors do not fill one batch of {batch_size}")
    return max(1, math.ceil(min_tokens / per_epoch))


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> Any:
    """The row indices of every training batch, concatenated (int64 [steps × batch_size]), exactly as
    `D.TensorBatchSource(data, batch_size, seed)` yields them: it is run on the row indices themselves."""
    import torch

    import dictionaries as D

    if n >= 2**24:
        raise ValueError("float32 holds row indices exactly only below 2**24")
    source = D.TensorBatchSource(torch.arange(n, dtype=torch.float32)[:, None], batch_size, seed=seed)
    return torch.cat([batch[:, 0].long() for epoch in range(epochs) for batch in source.batches(epoch)])


def interpolate_fvu(points: list[tuple[float, float]], l0: float) -> float | None:
    """FVU of a frontier [(L0, FVU), ...] at `l0`, linear in log L0 and log FVU between the two
    neighbouring points; None outside the frontier's L0 range (no extrapolation)."""
    points = sorted((a, b) for a, b in points if a > 0 and b > 0)
    for (l0_a, fvu_a), (l0_b, fvu_b) in zip(points, points[1:]):
        if l0_a <= l0 <= l0_b:
            if l0_b == l0_a:
                return min(fvu_a, fvu_b)
            t = (math.log(l0) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return math.exp(math.log(fvu_a) + t * (math.log(fvu_b) - math.log(fvu_a)))
    if len(points) == 1 and points[0][0] == l0:
        return points[0][1]
    return None


def pair_up(rows: dict[str, dict], ks: list[int], tolerance: float = L0_TOLERANCE) -> list[dict]:
    """One pair per family and k present on both sides: our FVU ÷ SAELens's, the L0 gap, the flag,
    and our FVU ÷ SAELens's frontier (same family) interpolated at our L0."""
    pairs = []
    for family in FAMILIES:
        frontier = [
            (r["l0"], r["fvu"]) for k in ks if (r := rows.get(dictionary_name("saelens", family, k))) is not None
        ]
        for k in ks:
            ours, theirs = rows.get(dictionary_name("ours", family, k)), rows.get(dictionary_name("saelens", family, k))
            if ours is None or theirs is None:
                continue
            l0_gap = ours["l0"] / theirs["l0"] - 1 if theirs["l0"] > 0 else math.inf
            at_our_l0 = interpolate_fvu(frontier, ours["l0"])
            pairs.append(
                {
                    "family": family,
                    "k": k,
                    "l0_ours": ours["l0"],
                    "l0_saelens": theirs["l0"],
                    "l0_gap": l0_gap,
                    "matched": abs(l0_gap) <= tolerance,
                    "fvu_ours": ours["fvu"],
                    "fvu_saelens": theirs["fvu"],
                    "fvu_ratio": ours["fvu"] / theirs["fvu"],
                    "fvu_ratio_interp": ours["fvu"] / at_our_l0 if at_our_l0 else None,
                }
            )
            pairs[-1]["verdict"] = verdict(pairs[-1])
    return pairs


def verdict(pair: dict) -> str:
    """'ours' or 'saelens': the lower FVU at matched L0, or, unmatched, the side with both the lower (or
    equal) L0 and the lower (or equal) FVU; 'undecided' when an unmatched pair trades one for the other."""
    if pair["matched"]:
        return "ours" if pair["fvu_ours"] <= pair["fvu_saelens"] else "saelens"
    if pair["l0_ours"] <= pair["l0_saelens"] and pair["fvu_ours"] <= pair["fvu_saelens"]:
        return "ours"
    if pair["l0_saelens"] <= pair["l0_ours"] and pair["fvu_saelens"] <= pair["fvu_ours"]:
        return "saelens"
    return "undecided"


def best_learning_rate(rows_by_lr: dict[float, dict[str, dict]]) -> dict[str, dict]:
    """Each dictionary at the learning rate its tool does best with, by the same rule for both tools
    and for every family and k on its own: first the target L0, k (the rows within ±5% of it, or else
    the one row closest to it, in ratio), then health (of those, the rows with at most DEAD_TARGET
    dead latents, if any), then the lowest held-out FVU. Without L0 first, a JumpReLU that never
    reached its target would win on FVU at several times the L0."""
    names = dict.fromkeys(name for rows in rows_by_lr.values() for name in rows)
    best = {}
    for name in names:
        candidates = [rows[name] for rows in rows_by_lr.values() if name in rows]
        k = candidates[0]["k"]
        pool = candidates
        if k is not None:
            on_target = [row for row in candidates if abs(row["l0"] / k - 1) <= L0_TOLERANCE]
            pool = on_target or [min(candidates, key=lambda row: abs(math.log(max(row["l0"], 1e-9) / k)))]
        healthy = [row for row in pool if row["dead"] <= DEAD_TARGET]
        best[name] = min(healthy or pool, key=lambda row: row["fvu"])
    return best


def summarise(rows: dict[str, dict], pairs: list[dict]) -> dict[str, Any]:
    """The RESULT fields: worst ratios, dead fractions and loss recovered of both sides."""

    def worst(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None and math.isfinite(v)]
        return max(present) if present else None

    def side(tool: str, key: str, pick=max) -> float | None:
        values = [
            r[key]
            for name, r in rows.items()
            if name.startswith(f"{tool}/") and r["family"] in FAMILIES and r.get(key) is not None
        ]
        return pick(values) if values else None

    matched = [p for p in pairs if p["matched"]]
    worst_pair = max(matched, key=lambda p: p["fvu_ratio"]) if matched else None
    summary = {
        "worst_fvu_ratio": worst([p["fvu_ratio"] for p in matched]),
        "max_dead_fraction": side("ours", "dead"),
        "pairs": len(pairs),
        "matched_pairs": len(matched),
        "flagged_pairs": len(pairs) - len(matched),
        "worst_pair": f"{worst_pair['family']}-k{worst_pair['k']}" if worst_pair else None,
        "worst_fvu_ratio_all": worst([p["fvu_ratio"] for p in pairs]),
        "worst_fvu_ratio_interp": worst([p["fvu_ratio_interp"] for p in pairs]),
        "pairs_won": sum(p["verdict"] == "ours" for p in pairs),
        "pairs_lost": sum(p["verdict"] == "saelens" for p in pairs),
        "pairs_undecided": sum(p["verdict"] == "undecided" for p in pairs),
        "saelens_max_dead_fraction": side("saelens", "dead"),
        "min_loss_recovered_ours": side("ours", "loss_recovered", min),
        "min_loss_recovered_saelens": side("saelens", "loss_recovered", min),
    }
    summary["targets_met"] = (
        summary["worst_fvu_ratio"] is not None
        and summary["worst_fvu_ratio"] <= FVU_TARGET
        and summary["max_dead_fraction"] is not None
        and summary["max_dead_fraction"] <= DEAD_TARGET
    )
    return summary


def result_line(summary: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """`RESULT key=value ...`: floats to 4 significant digits, None as 'none'."""

    def text(value: Any) -> str:
        if value is None:
            return "none"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return "RESULT " + " ".join(f"{key}={text(value)}" for key, value in {**summary, **(extra or {})}.items())


def learning_rates(lr: float, steps: int, warmup_fraction: float) -> tuple[Any, list[float]]:
    """Our schedule (warm-up then cosine to lr/10) and its value at every step, for SAELens's optimiser."""
    import dictionaries as D

    schedule = D.ScheduleConfig(kind="warmup_cosine", warmup_steps=round(warmup_fraction * steps), min_lr=lr / 10)
    return schedule, [D.learning_rate(schedule, lr, step, steps) for step in range(steps)]


# --- the SAELens side (runs in the SAELens venv: no project imports) --------------------------------------------


def saelens_side(job_path: Path) -> None:
    """Train every SAE of the job with SAELens's own trainer on the saved batches, save each for inference,
    and run SAELens's loaded inference SAE on the first held-out vectors (for the import check)."""
    import sae_lens
    import torch
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import load_file, save_file

    classes = {
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
        "matryoshka_batchtopk": (MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig),
        "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
    }
    job = json.loads(job_path.read_text())
    out = Path(job["out"])
    data = load_file(job["train"])
    vectors, order = data["vectors"], data["order"]
    batch_size, lrs = job["batch_size"], job["lrs"]
    steps = len(lrs)
    check = load_file(job["heldout"])["vectors"][:CHECK_VECTORS]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def batches(count: int):
        for i in range(count):
            yield vectors[order[i * batch_size : (i + 1) * batch_size]]

    for name, spec in job["saes"].items():
        folder, record = out / name, out / f"{name}.json"
        if record.exists() and (folder / "cfg.json").exists():
            print(f"[saelens] {name}: already trained", flush=True)
            continue
        torch.manual_seed(job["seed"])
        sae_class, config_class = classes[spec["architecture"]]
        config = config_class(
            d_in=vectors.shape[1],
            d_sae=job["width"],
            device=device,
            metadata=SAEMetadata(**job["metadata"]),
            **spec["fields"],
        )
        sae = sae_class(config)
        trainer_config = SAETrainerConfig(
            total_training_samples=steps * batch_size,
            train_batch_size_samples=batch_size,
            lr=job["lr"],
            lr_end=job["lr"] / 10,
            device=device,
            logger=LoggingConfig(log_to_wandb=False),
        )
        trainer = SAETrainer(cfg=trainer_config, sae=sae, data_provider=batches(steps))
        # The shared schedule, step by step (LambdaLR multiplies the base lr, which is job["lr"]).
        trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            trainer.optimizer, lambda step: lrs[min(step, steps - 1)] / job["lr"]
        )
        if config.normalize_activations == "expected_average_only_in":
            # SAELens's own estimate, from the first batches of the same order (its trainer would draw them
            # from the data provider, shifting the batches by as many).
            n_estimate = min(steps, trainer_config.n_batches_for_norm_estimate)
            trainer.activation_scaler.estimate_scaling_factor(vectors.shape[1], batches(n_estimate), n_estimate)
        start = time.perf_counter()
        sae = trainer.fit()
        seconds = time.perf_counter() - start
        sae.save_inference_model(folder)
        loaded = SAE.load_from_disk(folder, device="cpu")
        with torch.no_grad():
            features = loaded.encode(check)
            save_file(
                {"features": features.contiguous(), "recon": loaded.decode(features).contiguous()},
                out / f"{name}.check.safetensors",
            )
        summary = {
            "seconds": seconds,
            "steps": trainer.n_training_steps,
            "train_window_l0": sae.cfg.metadata.l0,
            "train_dead_latents": sae.cfg.metadata.num_dead_features,
            "inference_class": type(loaded).__name__,
            "config": dict(spec["fields"]),
            "sae_lens": sae_lens.__version__,
            "torch": torch.__version__,
        }
        record.write_text(json.dumps(summary, indent=1))
        print(f"[saelens] {name}: {seconds:.1f}s, training-window L0 {sae.cfg.metadata.l0}", flush=True)


# --- our side ------------------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from the full or --small preset."""
    for key, (full, small) in PRESETS.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.small else full)
    if args.loss_ks is None:
        args.loss_ks = list(args.ks)
    return args


def harvest_store(args: argparse.Namespace, out: Path) -> Any:
    """The store at OUT/store (harvested or resumed) and the language model (loaded once, or None)."""
    from activation_cache import BUILTIN_SMOLLM2, ActivationStore, HarvestConfig, harvest, load_model
    from activation_cache.corpus import BUILTIN_PYTHON_DOCS

    lm = load_model(BUILTIN_SMOLLM2, device=args.device) if args.loss_rows > 0 else None
    config = HarvestConfig(
        out=str(out / "store"),
        model=BUILTIN_SMOLLM2,
        hooks=[HOOK],
        dataset=BUILTIN_PYTHON_DOCS,
        tokens=args.tokens,
        context_length=128,
        device=args.device,
    )
    harvest(config, model=lm)
    return ActivationStore(out / "store"), lm


def split_by_norm(vectors: Any, cap: float | None) -> tuple[Any, Any]:
    """(the vectors at most `cap` long, the longer ones), each in their original order; None: all typical."""
    if cap is None:
        return vectors, vectors[:0]
    typical = vectors.norm(dim=-1) <= cap
    return vectors[typical], vectors[~typical]


def norm_cap(train: Any, ratio: float) -> float | None:
    """`ratio` × the median norm of the train side's vectors; None when ratio is 0 (keep them all)."""
    return float(ratio * train.norm(dim=-1).median()) if ratio else None


def variance_share(typical: Any, outliers: Any) -> float:
    """The fraction of Σ‖x − x̄‖² over all the vectors that the outliers carry (x̄ over all)."""
    import torch

    every = torch.cat([typical, outliers])
    centred = (every - every.mean(dim=0)).pow(2).sum(-1)
    return float(centred[typical.shape[0] :].sum() / centred.sum())


def side_vectors(store: Any, side: str, limit: int) -> Any:
    """The first `limit` vectors (0: all) of one side of the default split, in store order, as float32."""
    import torch

    from activation_cache import Split

    parts, count = [], 0
    for chunk in store.iter_split(HOOK, side, Split()):
        take = chunk.vectors if not limit else chunk.vectors[: limit - count]
        parts.append(take.float())
        count += take.shape[0]
        if limit and count >= limit:
            break
    if not parts or count == 0:
        raise SystemExit(f"the {side} side of {store.root} is empty: harvest more tokens (--tokens)")
    return torch.cat(parts)


def our_configs(args: argparse.Namespace, d: int) -> dict[str, Any]:
    import dictionaries as D

    configs = {}
    for family in args.families:
        architecture = FAMILIES[family][0]
        for k in args.ks:
            fields = {"target_l0": float(k)} if architecture == "jumprelu" else {"k": k}
            configs[f"{family}-k{k}"] = D.make_config(architecture, d=d, n_latents=args.width, **fields)
    for architecture, fields in plot_only(args).items():
        configs[architecture] = D.make_config(architecture, d=d, n_latents=args.width, **fields)
    return configs


def every_family(args: argparse.Namespace) -> bool:
    """A run of every family (the default), rather than of some (`--families`)."""
    return set(args.families) == set(FAMILIES)


def plot_only(args: argparse.Namespace) -> dict[str, dict]:
    """Our other families, trained for the plot only in a run of every family."""
    return PLOT_ONLY if every_family(args) else {}


def ours_folder(args: argparse.Namespace, run: Path) -> Path:
    """Our training run: `ours` with every family; a run of some families (`--families`) trains into
    its own folder, so that changing one family's recipe retrains only that family."""
    if every_family(args):
        return run / "ours"
    return run / ("ours-" + "-".join(args.families))


def output_name(args: argparse.Namespace, stem: str, suffix: str) -> str:
    """results.json / frontier.png, tagged with the families when not all of them run."""
    if every_family(args):
        return stem + suffix
    return f"{stem}-{'-'.join(args.families)}{suffix}"


def saelens_job(args: argparse.Namespace, run: Path, lr: float, steps_lrs: list[float], store: Any) -> dict[str, Any]:
    saes = {}
    for family in args.families:
        architecture = FAMILIES[family][1]
        for k in args.ks:
            fields: dict[str, Any] = {"k": float(k) if "batchtopk" in architecture else k}
            if architecture == "matryoshka_batchtopk":
                fields["matryoshka_widths"] = [args.width // 4, args.width // 2, args.width]
            if architecture == "jumprelu":
                fields = {**SAELENS_JUMPRELU, "target_l0": float(k)}
            saes[f"{family}-k{k}"] = {"architecture": architecture, "fields": fields}
    return {
        "out": str(run / "saelens"),
        "train": str(run / "data" / "train.safetensors"),
        "heldout": str(run / "data" / "heldout.safetensors"),
        "batch_size": args.batch_size,
        "width": args.width,
        "lr": lr,
        "lrs": steps_lrs,
        "seed": args.seed,
        "saes": saes,
        "metadata": {
            "hook_name": HOOK,
            "model_name": store.manifest.model["id"],
            "context_size": store.context_length,
            "prepend_bos": True,
        },
    }


def train_both(args, run: Path, lr: float, epochs: int, train, heldout, order, store, python, device, timings) -> None:
    """Our dictionaries and SAELens's, trained at `lr` on the same batches, into `run` (each side
    resumes, or skips what is already trained, when run again)."""
    from safetensors.torch import save_file

    import dictionaries as D
    from activation_cache import Split
    from interp_sae.provenance import data_provenance

    (run / "data").mkdir(parents=True, exist_ok=True)
    save_file({"vectors": train.contiguous(), "order": order}, run / "data" / "train.safetensors")
    save_file({"vectors": heldout.contiguous()}, run / "data" / "heldout.safetensors")
    steps = order.shape[0] // args.batch_size
    schedule, lrs = learning_rates(lr, steps, args.warmup_fraction)
    t = time.perf_counter()
    D.train(
        our_configs(args, train.shape[1]),
        D.TensorBatchSource(train, args.batch_size, seed=args.seed),
        ours_folder(args, run),
        D.TrainConfig(
            epochs=epochs,
            lr=lr,
            schedule=schedule,
            seed=args.seed,
            device=str(device),
            normalize_input=True,
            checkpoint_every=max(1, steps // 5),  # a killed run resumes when run again
            log_every=max(1, steps // 4),
            eval_max_vectors=min(4096, heldout.shape[0]),
            curve_vectors=min(1024, heldout.shape[0]),
            progress=False,
        ),
        eval_source=D.TensorBatchSource(heldout, args.batch_size, shuffle=False, drop_last=False),
        metadata=data_provenance(store, HOOK, Split()),
    )
    timings[f"train_ours_lr{lr:g}_s"] = time.perf_counter() - t

    t = time.perf_counter()
    job = saelens_job(args, run, lr, lrs, store)
    (run / "saelens").mkdir(exist_ok=True)
    (run / "saelens_job.json").write_text(json.dumps(job, indent=1))
    subprocess.run(
        [python, Path(__file__).resolve(), "--child", run / "saelens_job.json"],
        check=True,
        cwd=run,
        env={**os.environ, "TQDM_DISABLE": "1"},  # SAELens's progress bars, one per SAE, say nothing the log does not
    )
    timings[f"train_saelens_lr{lr:g}_s"] = time.perf_counter() - t


def score_run(args, run: Path, lr: float, heldout, outliers) -> dict[str, dict]:
    """Every dictionary of one run (one learning rate), ours and imported, scored by the same
    functions on the same held-out vectors (and, for the record, with the held-out outliers too:
    `fvu_with_outliers`). Loss recovered comes later, for the learning rate each tool keeps."""
    import torch
    from safetensors.torch import load_file

    import dictionaries as D
    from interp_sae.saelens import import_saelens

    source = D.TensorBatchSource(heldout, args.batch_size, shuffle=False, drop_last=False)
    every = torch.cat([heldout, outliers])
    with_outliers = D.TensorBatchSource(every, args.batch_size, shuffle=False, drop_last=False)
    folders: dict[str, tuple[str, int | None, Path]] = {}
    for family in args.families:
        for k in args.ks:
            folders[dictionary_name("ours", family, k)] = (family, k, ours_folder(args, run) / f"{family}-k{k}")
            imported = import_saelens(run / "saelens" / f"{family}-k{k}", run / "imported" / f"{family}-k{k}")
            folders[dictionary_name("saelens", family, k)] = (family, k, imported)
    for architecture in plot_only(args):
        folders[dictionary_name("ours", architecture)] = (architecture, None, run / "ours" / architecture)
    rows: dict[str, dict] = {}
    for name, (family, k, folder) in folders.items():
        model = D.load_dictionary(folder).to(heldout.device)
        report = D.evaluate(model, source, max_vectors=heldout.shape[0])
        row = {
            "family": family,
            "k": k,
            "lr": lr,
            "folder": str(folder),
            "architecture": model.architecture,
            "fvu": report["fvu_deterministic"],
            "l0": report["ad_mean"],
            "ad_method": report["ad_method"],
            "dead": report["dead_fraction"],
            "dense": report["dense_fraction"],
            "loss_recovered": None,
            "fvu_with_outliers": D.evaluate(model, with_outliers, max_vectors=every.shape[0], max_norm=math.inf)[
                "fvu_deterministic"
            ],
        }
        if name.startswith("saelens/"):  # SAELens's own inference SAE vs our import of it, same inputs
            check = load_file(run / "saelens" / f"{family}-k{k}.check.safetensors")
            with torch.no_grad():
                recon = model(heldout[:CHECK_VECTORS]).cpu()
            row["import_rel_diff"] = float((recon - check["recon"]).abs().max() / check["recon"].abs().max())
            row["saelens_record"] = json.loads((run / "saelens" / f"{family}-k{k}.json").read_text())
        rows[name] = row
        print(
            f"  lr {lr:g}: scored {name:<26} FVU {row['fvu']:.4f}  L0 {row['l0']:7.2f}  dead {row['dead']:.3f}",
            flush=True,
        )
    return rows


def add_loss_recovered(args, rows: dict[str, dict], cap, store, lm, device) -> None:
    """The fraction of LM loss recovered with each kept dictionary spliced in (the families' rows at --loss-ks)."""
    import dictionaries as D
    from interp_sae.splice import loss_recovered

    for name, row in rows.items():
        if lm is None or row["family"] not in FAMILIES or row["k"] not in args.loss_ks:
            continue
        model = D.load_dictionary(Path(row["folder"])).to(device)
        scored = loss_recovered(lm, model, store, hook=HOOK, max_rows=args.loss_rows, max_norm=cap)
        row["loss_recovered"] = scored["fraction_recovered"]
        row["loss_predictions"] = scored["predictions"]
        print(f"  loss recovered {name:<26} {row['loss_recovered']:.3f}", flush=True)


def plot_frontier(rows: dict[str, dict], path: Path, title: str) -> None:
    """FVU against L0 (AD for VAEase), one line per tool and family."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from interp_sae.atomic import write_atomic

    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    colours = dict(zip([*FAMILIES, *PLOT_ONLY], ["C0", "C1", "C2", "C3", "C4", "C5"]))
    for tool, style in (("ours", "-o"), ("saelens", "--x")):
        for family in FAMILIES:
            points = sorted(
                (r["l0"], r["fvu"]) for name, r in rows.items() if name.startswith(f"{tool}/") and r["family"] == family
            )
            if points:
                xs, ys = zip(*points)
                label = f"{'interp-sae' if tool == 'ours' else 'SAELens'} {family}"
                ax.plot(xs, ys, style, color=colours[family], label=label, alpha=0.9 if tool == "ours" else 0.7)
    for family in PLOT_ONLY:
        row = rows.get(dictionary_name("ours", family))
        if row is not None:
            label = f"interp-sae {family} ({'AD' if row['ad_method'] != 'l0' else 'L0'})"
            ax.plot([row["l0"]], [row["fvu"]], "*", markersize=12, color=colours[family], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers; log-scale minor labels overlap
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    low, high = ax.get_xlim()
    ax.set_xticks([2**i for i in range(12) if low <= 2**i <= high])
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 2, 5, 10, 20) if low <= t <= high])
    ax.set_xlabel("L0 on held-out vectors (AD for VAEase)")
    ax.set_ylabel("FVU (centred), held-out")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))


def print_tables(rows: dict[str, dict], pairs: list[dict]) -> None:
    header = f"{'dictionary':<26}{'arch':>12}{'lr':>8}{'L0':>9}{'FVU':>9}{'FVU+out':>9}{'dead':>8}{'dense':>8}{'loss rec.':>11}"
    print(f"\n{header}{'train s':>9}")
    for name, r in rows.items():
        record = r.get("saelens_record") or {}
        loss = f"{r['loss_recovered']:.3f}" if r["loss_recovered"] is not None else "-"
        seconds = f"{record['seconds']:.0f}" if "seconds" in record else "-"
        print(
            f"{name:<26}{r['architecture']:>12}{r['lr']:>8g}{r['l0']:>9.2f}{r['fvu']:>9.4f}{r['fvu_with_outliers']:>9.4f}"
            f"{r['dead']:>8.3f}{r['dense']:>8.3f}"
            f"{loss:>11}{seconds:>9}"
        )
    print(
        f"\n{'pair':<16}{'L0 ours':>9}{'L0 SAEL':>9}{'ΔL0':>8}{'FVU ours':>10}{'FVU SAEL':>10}{'ratio':>8}{'interp':>8}  verdict"
    )
    for p in pairs:
        interp = f"{p['fvu_ratio_interp']:.3f}" if p["fvu_ratio_interp"] is not None else "-"
        print(
            f"{p['family'] + '-k' + str(p['k']):<16}{p['l0_ours']:>9.2f}{p['l0_saelens']:>9.2f}{p['l0_gap']:>+8.1%}"
            f"{p['fvu_ours']:>10.4f}{p['fvu_saelens']:>10.4f}{p['fvu_ratio']:>8.3f}{interp:>8}"
            f"  {p['verdict']}{'' if p['matched'] else ' (flagged: L0 not matched within ±5%)'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the <10-minute CPU preset (see above)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality_vs_saelens"))
    parser.add_argument("--venv", type=Path, default=Path("/tmp/saelens-venv"), help="SAELens venv (built if missing)")
    parser.add_argument("--sae-lens", default="sae-lens", help="pip requirement for SAELens, e.g. 'sae-lens==6.54.12'")
    parser.add_argument("--tokens", type=int, default=None, help="harvest budget (full 600k; small 40,960)")
    parser.add_argument("--width", type=int, default=None, help="latents (full 2048; small 1024)")
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64], help="L0 targets")
    parser.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=list(FAMILIES),
        help="race only these (default: all, plus VAEase and the weighted SAE on the plot); ours then train "
        "into runs/TAG/ours-FAMILIES, SAELens's trained ones are reused, and the outputs are named after them",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="vectors per step (full 4096; small 1024)")
    parser.add_argument("--min-train-tokens", type=int, default=None, help="epochs until steps×batch ≥ this (500k)")
    parser.add_argument("--max-train-vectors", type=int, default=None, help="cap on train vectors, 0 = all")
    parser.add_argument("--heldout-vectors", type=int, default=None, help="held-out vectors evaluated")
    parser.add_argument("--loss-rows", type=int, default=None, help="rows of 128 tokens for loss recovered, 0 = skip")
    parser.add_argument("--loss-ks", type=int, nargs="+", default=None, help="ks whose pairs get loss recovered")
    parser.add_argument(
        "--lr",
        type=float,
        nargs="+",
        default=None,
        help="Adam lrs (warm-up, cosine to lr/10): both tools train at each, and each keeps its best per dictionary "
        "(full 5e-3 7e-3 1e-2; small 5e-3 1e-2)",
    )
    parser.add_argument("--warmup-fraction", type=float, default=0.05)
    parser.add_argument(
        "--max-norm-ratio",
        type=float,
        default=3.0,
        help="leave out vectors longer than this × the train side's median norm (massive activations), 0 = none",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="auto", help="our side and the language model; SAELens uses its venv's torch"
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the SAELens side
    args = parser.parse_args()
    if args.child is not None:
        saelens_side(args.child)
        return
    run_benchmark(settings_from(args))


def run_benchmark(args: argparse.Namespace) -> None:

    from interp_sae.runtime import resolve_device

    start, timings = time.perf_counter(), {}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.saelens_check import ensure_venv

    python = ensure_venv(args.venv, args.sae_lens)
    timings["venv_s"] = time.perf_counter() - start

    store, lm = harvest_store(args, out)
    timings["harvest_and_model_s"] = time.perf_counter() - start - timings["venv_s"]

    train = side_vectors(store, "train", args.max_train_vectors)
    cap = norm_cap(train, args.max_norm_ratio)
    train, train_outliers = split_by_norm(train, cap)
    heldout, outliers = split_by_norm(side_vectors(store, "validation", args.heldout_vectors), cap)
    outlier_share = variance_share(heldout, outliers)
    epochs = epochs_for(train.shape[0], args.batch_size, args.min_train_tokens)
    order = batch_order(train.shape[0], args.batch_size, epochs, args.seed)
    steps = order.shape[0] // args.batch_size
    print(
        f"store {store.root}: {len(store):,} vectors; train side {train.shape[0]:,} vectors × {epochs} epoch(s) = "
        f"{steps} steps of {args.batch_size} ({steps * args.batch_size:,} training tokens); held-out {heldout.shape[0]:,}",
        flush=True,
    )
    if cap is not None:
        print(
            f"left out of both tools' training and scoring: {train_outliers.shape[0]} train and {outliers.shape[0]} "
            f"held-out vectors longer than {cap:.1f} ({args.max_norm_ratio:g}× the train side's median norm); "
            f"those held-out ones carry {outlier_share:.1%} of the held-out variance",
            flush=True,
        )

    device = resolve_device(args.device)
    identities, rows_by_lr = {}, {}
    for lr in args.lr:
        identity = {
            "store": store.fingerprint,
            "train": list(train.shape),
            "heldout": list(heldout.shape),
            "epochs": epochs,
            **{key: getattr(args, key) for key in ("width", "ks", "batch_size")},
            "lr": lr,
            **{key: getattr(args, key) for key in ("warmup_fraction", "seed", "max_norm_ratio")},
        }
        digest = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:8]
        run = out / "runs" / f"w{args.width}-b{args.batch_size}-s{steps}-{digest}"
        identities[str(run)] = identity
        print(f"lr {lr:g}: run folder {run}", flush=True)
        train_both(args, run, lr, epochs, train, heldout, order, store, python, device, timings)
        rows_by_lr[lr] = score_run(args, run, lr, heldout.to(device), outliers.to(device))
    rows = best_learning_rate(rows_by_lr)
    t = time.perf_counter()
    add_loss_recovered(args, rows, cap, store, lm, device)
    timings["loss_recovered_s"] = time.perf_counter() - t
    pairs = pair_up(rows, args.ks)
    summary = summarise(rows, pairs)
    lr_text = (
        f"lr {args.lr[0]:g}"
        if len(args.lr) == 1
        else "lr: each tool's best of " + ", ".join(f"{lr:g}" for lr in args.lr)
    )
    title = (
        f"SmolLM2-135M {HOOK}, {args.width} latents\n{steps} steps × {args.batch_size} "
        f"({steps * args.batch_size:,} training tokens), {lr_text}, {heldout.shape[0]:,} held-out vectors"
    )
    frontier = out / output_name(args, "frontier", ".png")
    plot_frontier(rows, frontier, title)
    timings["total_s"] = time.perf_counter() - start
    import_diffs = [r["import_rel_diff"] for r in rows.values() if "import_rel_diff" in r]
    saelens_version = next((r["saelens_record"]["sae_lens"] for r in rows.values() if "saelens_record" in r), None)
    extra = {
        "import_max_rel_diff": max(import_diffs) if import_diffs else None,
        "width": args.width,
        "steps": steps,
        "batch_size": args.batch_size,
        "training_tokens": steps * args.batch_size,
        "unique_training_tokens": train.shape[0],
        "heldout_vectors": heldout.shape[0],
        "max_norm": cap,
        "outliers_train": train_outliers.shape[0],
        "outliers_heldout": outliers.shape[0],
        "outlier_variance_share": outlier_share,
        "sae_lens": saelens_version,
        "seconds": round(timings["total_s"]),
    }
    results = {
        "settings": {**vars(args), "out": str(args.out), "venv": str(args.venv), "child": None},
        "runs": identities,
        "timings": timings,
        "rows": rows,
        "rows_by_lr": {str(lr): lr_rows for lr, lr_rows in rows_by_lr.items()},
        "pairs": pairs,
        "summary": {**summary, **extra},
    }
    results_file = out / output_name(args, "results", ".json")
    results_file.write_text(json.dumps(results, indent=1, default=str))
    print_tables(rows, pairs)
    print("\ntimings (s): " + ", ".join(f"{key} {value:.0f}" for key, value in timings.items()))
    print(f"frontier: {frontier}; results: {results_file}")
    print(result_line(summary, extra))


if __name__ == "__main__":
    main()
