"""Train one or more dictionaries on one stream of batches, resumably.

Every batch is read once and fed to every dictionary (one forward/backward each), so comparing
architectures or sizes pays the data reads once. A run lives in `out_dir`:

    out_dir/train_config.json        how the run was made
    out_dir/checkpoint.safetensors   the latest checkpoint (atomic; see checkpoint.py)
    out_dir/log.jsonl                one JSON record per log/eval/error event
    out_dir/ad_re_curves.png         every dictionary's AD–RE curve
    out_dir/NAME/                    config.json + model.safetensors (load_dictionary reads it),
                                     metrics.json, ad_re_curve.csv, ad_re_curve.png

Calling `train` again with the same arguments resumes from the checkpoint and ends exactly where
an uninterrupted run would: the model, optimiser and noise-generator states are restored, the
learning rate is a pure function of the step, and the data order a pure function of the epoch
(or, for a source with a `state_dict`, such as activations computed on the fly, restored from
the checkpoint with everything else, each rank's own).

One source may feed several kinds of activation at once (several hooks of one forward pass):
its batches are then dicts, and `inputs` says which key each dictionary trains on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from tqdm.auto import tqdm

from dictionaries.base import Dictionary, DictionaryConfig, LossTerms
from dictionaries.checkpoint import load_checkpoint, optimizer_from_flat, optimizer_to_flat, save_checkpoint
from dictionaries.data import BatchSource, NormCappedSource, derive_seed, take_vectors, within_norm
from dictionaries.distributed import LossModule, wrap_for_cluster
from dictionaries.io import save_dictionary
from dictionaries.metrics import ad_re_curve, evaluate, plot_ad_re_curves, write_curve_csv
from dictionaries.registry import create
from dictionaries.run_log import RunLog
from dictionaries.schedules import ScheduleConfig, learning_rate
from interp_sae.atomic import remove_stale_temporaries, write_json_atomic
from interp_sae.deferred_interrupt import deferred_interrupt
from interp_sae.errors import ConfigError, InterpSAEError
from interp_sae.folder_lock import exclusive_folder
from interp_sae.heap import reused_heap
from interp_sae.runtime import Cluster, join_cluster, resolve_device

CHECKPOINT_FILE = "checkpoint.safetensors"
TRAIN_LOCK_FILE = ".train.lock"
# Purposes for derive_seed, so initialisation, training noise and evaluation noise never share a stream.
_INIT, _NOISE, _EVAL_NOISE = 0, 1, 2


@dataclass(kw_only=True)
class TrainConfig:
    """Defaults are the VAEase authors' LLM settings (Adam lr 5e-3, 35 epochs, cosine warm
    restarts stepped per batch, seed 114514). The batch size belongs to the batch source."""

    epochs: int = 35
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 114514
    device: str = "auto"
    """"auto" = cuda if available, else cpu; or any torch device string."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 = autocast of the forward pass; parameters and optimiser state stay fp32."""
    normalize_input: bool = False
    """Scale inputs so their mean norm is √d (estimated on the preparation sample); the scale is
    stored in the dictionary, which keeps taking and returning raw activations."""
    prepare_vectors: int = 65536
    """Size of the training sample for input normalisation and data-dependent set-up (WSAE weights)."""
    max_norm_ratio: float | None = None
    """Leave out of training, set-up and the trainer's evaluation every vector longer than this ×
    the preparation sample's median norm (None: keep them all). Such massive activations can rule
    a run: in SmolLM2-135M's layer 15 (`benchmarks/quality_vs_saelens.py`), 84 of 417k train
    vectors are over 3× the median norm (up to 100×), the 12 such held-out vectors (of 30k) carry
    72% of the held-out variance, and one in a batch takes hundreds of a batch top-k's slots.
    The cap, in raw units, is saved with each dictionary as `max_input_norm`; splicing and loss
    recovered leave longer activations as they are."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (0: only at the end)."""
    eval_every: int = 0
    """Steps between held-out evaluations (0: only at the end)."""
    log_every: int = 100
    eval_max_vectors: int = 65536
    curve_vectors: int = 4096
    """Held-out vectors for the AD–RE curve."""
    curve_max_k: int | None = None
    """Largest k of the AD–RE curve (default: n_latents)."""
    dense_threshold: float = 0.1
    wandb_project: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.epochs < 1 or self.lr <= 0:
            raise ConfigError(f"need epochs ≥ 1 and lr > 0, got epochs={self.epochs}, lr={self.lr}")
        if self.max_norm_ratio is not None and not self.max_norm_ratio > 0:
            raise ConfigError(
                f"max_norm_ratio must be positive (leave it unset to keep every vector), got {self.max_norm_ratio}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class NonFiniteLossError(InterpSAEError, FloatingPointError):
    """A loss term became NaN or Inf; training stopped before applying the update."""


class RunBusyError(InterpSAEError, RuntimeError):
    """Another process is training into the same folder."""


@dataclass
class TrainResult:
    dictionaries: dict[str, Dictionary]
    metrics: dict[str, dict]
    out_dir: Path
    steps: int


def training_step(
    model: Dictionary,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    replica: torch.nn.Module | None = None,
    cluster: Cluster = Cluster(),
) -> LossTerms:
    """One optimiser step on `batch`; returns the detached loss terms. Raises
    NonFiniteLossError naming the bad terms *before* the parameters change. Under DDP,
    `replica` is the wrapped `LossModule` whose backward averages gradients across ranks."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        terms = replica(batch, generator) if replica is not None else model.loss(batch, generator)
    loss = cast(torch.Tensor, sum(terms.values()))
    loss.backward()
    values = torch.stack([t.detach().float() for t in terms.values()])
    if not cluster.all_true(torch.isfinite(values).all()):  # the one host sync per step
        bad = {name: v for name, v in zip(terms, values.tolist()) if not math.isfinite(v)}
        raise NonFiniteLossError(f"loss term(s) {bad or '(on another rank)'} not finite")
    optimizer.step()
    model.after_optimizer_step()
    return {name: t.detach() for name, t in terms.items()}


def _view(source: Any, key: str | None) -> BatchSource:
    """The part of `source` under `key`: the source itself for None; else `source[key]` for a
    mapping of sources, or `source.view(key)` for a source of keyed batches."""
    if key is None:
        return source
    return source[key] if isinstance(source, Mapping) else source.view(key)


def _pick(batch: Any, key: str | None) -> torch.Tensor:
    return batch if key is None else batch[key]


def _sample(source: BatchSource, n: int) -> torch.Tensor:
    """The preparation sample: a source that computes its vectors (on the fly) may offer a
    cheaper `sample_vectors` than reading its first batches."""
    sample_vectors = getattr(source, "sample_vectors", None)
    return sample_vectors(n) if sample_vectors is not None else take_vectors(source, n)


class _Run:
    """The state of one `train` call; methods are the phases of the loop."""

    def __init__(
        self, dictionaries, train_source, out_dir, config, eval_source, metadata, inputs=None, own_metadata=None
    ) -> None:
        self.config, self.train_source, self.metadata = config, train_source, metadata
        self.own_metadata: Mapping[str, dict] = own_metadata or {}
        self.eval_source = eval_source or train_source
        self.eval_split = "held_out" if eval_source is not None else "train"
        self.inputs: dict[str, str | None] = {name: (inputs or {}).get(name) for name in dictionaries}
        self.keys = list(dict.fromkeys(self.inputs.values()))
        self.norm_caps: dict[str | None, float | None] = dict.fromkeys(self.keys)  # set by start or _restore
        self.train_views = {name: _view(train_source, key) for name, key in self.inputs.items()}
        # A source whose batches are already this rank's share (each rank reads its own data).
        self.per_rank_batches = bool(getattr(train_source, "per_rank_batches", False))
        self.eval_views = {name: _view(self.eval_source, key) for name, key in self.inputs.items()}
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.device)
        self.cluster = join_cluster(self.device)
        self.models: dict[str, Dictionary] = {}
        for i, (name, spec) in enumerate(dictionaries.items()):
            model = (
                create(spec, seed=derive_seed(config.seed, _INIT, i)) if isinstance(spec, DictionaryConfig) else spec
            )
            d = self.train_views[name].d
            if model.config.d != d:
                raise ConfigError(f"dictionary {name!r} has d={model.config.d} but the batches have d={d}")
            self.models[name] = model.to(self.device).train()
        self.replicas = {
            name: wrap_for_cluster(LossModule(m), self.cluster, self.device) for name, m in self.models.items()
        }
        fused = self.device.type == "cuda"  # one kernel per step on GPU; the CPU path stays the reference
        self.optimizers = {
            name: torch.optim.Adam(m.parameters(), lr=config.lr, betas=config.betas, fused=fused)
            for name, m in self.models.items()
        }
        self.generators = {
            name: torch.Generator(self.device).manual_seed(derive_seed(config.seed, _NOISE, i, self.cluster.rank))
            for i, name in enumerate(self.models)
        }
        self.steps_per_epoch = [train_source.num_batches(e) for e in range(config.epochs)]
        self.total_steps = sum(self.steps_per_epoch)
        for name, model in self.models.items():  # a source that does not say its batch size: no plan
            batch_size = getattr(self.train_views[name], "batch_size", None)
            if batch_size is not None:  # the tokens this rank trains on: its slice of a shared batch
                share = 1 if self.per_rank_batches else self.cluster.world_size
                model.plan_training(self.total_steps * batch_size // share)
        self.signature = {
            "train": {k: v for k, v in config.to_dict().items() if k in _RESULT_FIELDS and v is not None},
            "dictionaries": {name: [m.architecture, m.config.to_dict()] for name, m in self.models.items()},
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.cluster.world_size,
        }
        self.checkpoint_path = self.out_dir / CHECKPOINT_FILE
        self.epoch = self.batch = self.step = 0
        self.last_checkpoint_step: int | None = None
        self.term_names: dict[str, list[str]] = {}

    # --- set-up and resume -------------------------------------------------------------------
    def start(self) -> None:
        if self.cluster.is_main:
            # A checkpoint half-written when a run was killed; the previous one stands.
            remove_stale_temporaries(self.out_dir, CHECKPOINT_FILE)
        if self.checkpoint_path.exists():
            self._restore()
            return
        samples: dict[str | None, torch.Tensor] = {}
        for name, model in self.models.items():
            key = self.inputs[name]
            if key not in samples:
                sample = _sample(self.train_views[name], self.config.prepare_vectors).to(self.device, torch.float32)
                if self.config.max_norm_ratio is not None:
                    self.norm_caps[key] = self._norm_cap(sample)
                samples[key] = within_norm(sample, self.norm_caps[key])
            sample = samples[key]
            if self.config.normalize_input:
                model.input_scale.fill_(math.sqrt(sample.shape[1]) / float(sample.norm(dim=1).mean()))
            model.prepare(sample)
        if self.cluster.is_main:
            run_config = {
                "train": self.config.to_dict(),
                "dictionaries": self.signature["dictionaries"],
                "steps_per_epoch": self.steps_per_epoch,
                "eval_split": self.eval_split,
                "max_input_norms": {name: self.norm_caps[key] for name, key in self.inputs.items()},
            }
            write_json_atomic(self.out_dir / "train_config.json", run_config, indent=2)
        self._cap_eval_views()

    def _norm_cap(self, sample: torch.Tensor) -> float:
        cap = cast(float, self.config.max_norm_ratio) * float(sample.norm(dim=1).median())
        if not (math.isfinite(cap) and cap > 0):
            raise ConfigError(
                f"max_norm_ratio: the preparation sample's median norm gives the cap {cap}; the sample holds "
                "non-finite or all-zero vectors (check the store, e.g. `interp-sae verify`)"
            )
        return cap

    def _cap_eval_views(self) -> None:
        """Evaluate on what training keeps: without the vectors longer than the norm cap."""
        for name, key in self.inputs.items():
            cap = self.norm_caps[key]
            if cap is not None:
                self.eval_views[name] = NormCappedSource(self.eval_views[name], cap)

    def _restore(self) -> None:
        tensors, state = load_checkpoint(self.checkpoint_path)
        if state["signature"] != json.loads(json.dumps(self.signature)):
            differ = sorted(
                k for k in self.signature if state["signature"].get(k) != json.loads(json.dumps(self.signature[k]))
            )
            raise ConfigError(
                f"{self.checkpoint_path} belongs to a run with different {', '.join(differ)}; "
                "use a new out_dir, or delete the checkpoint to start over"
            )
        for name, model in self.models.items():
            prefix = f"{name}/model."
            model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            optimizer_from_flat(self.optimizers[name], tensors, f"{name}/optim.", state["param_groups"][name])
            self.generators[name].set_state(tensors[f"{name}/generator/rank{self.cluster.rank}"])
        if hasattr(self.train_source, "load_state_dict"):
            prefix = f"source/rank{self.cluster.rank}/"
            source_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            self.train_source.load_state_dict(source_tensors, state["source"][self.cluster.rank])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.last_checkpoint_step = self.step
        self.norm_caps = dict(zip(self.keys, state.get("norm_caps", [None] * len(self.keys))))
        self._cap_eval_views()

    def checkpoint(self) -> None:
        tensors, groups = {}, {}
        for name, model in self.models.items():
            tensors.update({f"{name}/model.{k}": v for k, v in model.state_dict().items()})
            flat, groups[name] = optimizer_to_flat(self.optimizers[name], f"{name}/optim.")
            tensors.update(flat)
            for rank, generator_state in enumerate(self.cluster.gather(self.generators[name].get_state(), self.device)):
                tensors[f"{name}/generator/rank{rank}"] = generator_state
        state = {
            "signature": self.signature,
            "param_groups": groups,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "norm_caps": [self.norm_caps[key] for key in self.keys],
        }
        if hasattr(self.train_source, "state_dict"):  # where a stateful source is, on every rank
            source_tensors, source_state = self.train_source.state_dict()
            state["source"] = self._gather_objects(source_state)
            for key, tensor in source_tensors.items():  # equal shapes on every rank: the source's promise
                for rank, part in enumerate(self.cluster.gather(tensor, self.device)):
                    tensors[f"source/rank{rank}/{key}"] = part
        if self.cluster.is_main:
            save_checkpoint(self.checkpoint_path, tensors, state)
        self.cluster.barrier()  # no rank goes on (or resumes) before the checkpoint is in place
        self.last_checkpoint_step = self.step

    def _gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's JSON-able `obj` (every rank must call it)."""
        if not self.cluster.distributed:
            return [obj]
        parts: list[Any] = [None] * self.cluster.world_size
        torch.distributed.all_gather_object(parts, obj)
        return parts

    # --- the loop ------------------------------------------------------------------------------
    def run(self, log: RunLog) -> None:
        cfg = self.config
        if self.step:
            log.say(f"resuming from step {self.step} (epoch {self.epoch}, batch {self.batch})")
            log.record("resume", step=self.step, epoch=self.epoch, batch=self.batch)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.cluster.is_main),
        )
        sums: dict[str, torch.Tensor | None] = {name: None for name in self.models}
        window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
        # Under torchrun a checkpoint is a collective, and a signal may reach one rank only: there
        # Ctrl-C stops at once and the last periodic checkpoint is the resume point.
        with deferred_interrupt(enabled=not self.cluster.distributed) as interrupt:
            for epoch in range(self.epoch, cfg.epochs):
                start = self.batch if epoch == self.epoch else 0
                for batch_index, batch in enumerate(self.train_source.batches(epoch, start), start=start):
                    xs = {key: _pick(batch, key).to(self.device, torch.float32, non_blocking=True) for key in self.keys}
                    # The norm cap applies to the whole batch, before ranks take their equal slices.
                    xs = {key: self._capped(x, key, epoch, batch_index) for key, x in xs.items()}
                    if not self.per_rank_batches:
                        xs = {key: self.cluster.local_slice(x) for key, x in xs.items()}
                    lr = learning_rate(cfg.schedule, cfg.lr, self.step, self.total_steps)
                    for name, model in self.models.items():
                        terms = self._step(name, model, xs[self.inputs[name]], lr, epoch, batch_index, log)
                        self.term_names[name] = list(terms)
                        values, previous = torch.stack(list(terms.values())), sums[name]
                        sums[name] = values if previous is None else previous + values
                    self.step, self.epoch, self.batch = self.step + 1, epoch, batch_index + 1
                    vectors = len(_pick(batch, self.keys[0])) * (
                        self.cluster.world_size if self.per_rank_batches else 1
                    )
                    window_tokens, window_steps = window_tokens + vectors, window_steps + 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        rate = window_tokens / (time.perf_counter() - window_start)
                        self._log_train(log, sums, lr, rate, window_steps)
                        sums = {name: None for name in self.models}
                        window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        if self.cluster.is_main:
                            self.evaluate(log)
                        self.cluster.barrier()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.checkpoint()
                    if interrupt.requested:  # Ctrl-C: save this step, then stop
                        if self.last_checkpoint_step != self.step:
                            self.checkpoint()
                        raise KeyboardInterrupt
                self.epoch, self.batch = epoch + 1, 0
        bar.close()
        self.checkpoint()

    def _capped(self, x: torch.Tensor, key: str | None, epoch: int, batch_index: int) -> torch.Tensor:
        """The batch without its vectors longer than the norm cap (NaN rows stay, for the NaN guard)."""
        kept = within_norm(x, self.norm_caps[key])
        if not len(kept):
            raise ConfigError(
                f"batch {batch_index} of epoch {epoch} holds only vectors longer than the norm cap "
                f"{self.norm_caps[key]:.4g}: raise max_norm_ratio, or use larger batches"
            )
        return kept

    def _step(self, name, model, x, lr, epoch, batch_index, log) -> LossTerms:
        optimizer = self.optimizers[name]
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            return training_step(
                model,
                optimizer,
                x,
                self.generators[name],
                self.config.precision,
                self.replicas[name] if self.cluster.distributed else None,
                self.cluster,
            )
        except NonFiniteLossError as error:
            where = f"step {self.step} (epoch {epoch}, batch {batch_index}), dictionary {name!r}: {error}"
            kept = (
                f"the last good checkpoint is {self.checkpoint_path} (step {self.last_checkpoint_step})"
                if self.last_checkpoint_step is not None
                else "no checkpoint had been written yet"
            )
            log.record(
                "nonfinite_loss", step=self.step, epoch=epoch, batch=batch_index, dictionary=name, error=str(error)
            )
            raise NonFiniteLossError(f"training stopped at {where}; {kept}") from None

    def _log_train(self, log: RunLog, sums, lr: float, rate: float, n_steps: int) -> None:
        """Loss terms averaged over the steps since the last line and over ranks."""
        parts = []
        for name in self.models:
            means = dict(zip(self.term_names[name], (self.cluster.mean(sums[name]) / n_steps).tolist()))
            loss = sum(means.values())
            log.record(
                "train",
                step=self.step,
                epoch=self.epoch,
                dictionary=name,
                lr=lr,
                loss=loss,
                terms=means,
                tokens_per_s=rate,
            )
            detail = " ".join(f"{k} {v:.4g}" for k, v in means.items())
            parts.append(f"{name}: loss {loss:.4g} ({detail})")
        log.say(
            f"step {self.step}/{self.total_steps} ep {self.epoch} lr {lr:.2e} {rate:,.0f} tok/s | " + " | ".join(parts)
        )

    # --- evaluation and outputs --------------------------------------------------------------
    def evaluate(self, log: RunLog) -> dict[str, dict]:
        reports = {}
        for i, (name, model) in enumerate(self.models.items()):
            generator = torch.Generator(self.device).manual_seed(derive_seed(self.config.seed, _EVAL_NOISE, i))
            report = evaluate(
                model, self.eval_views[name], self.config.eval_max_vectors, self.config.dense_threshold, generator
            )
            report["split"] = self.eval_split
            reports[name] = report
            log.record("eval", step=self.step, dictionary=name, **report)
            log.say(f"eval step {self.step} [{self.eval_split}] {name}: " + format_report(report))
        return reports

    def finish(self, log: RunLog) -> dict[str, dict]:
        reports = self.evaluate(log)
        samples: dict[str | None, torch.Tensor] = {}
        curves = {}
        for name, model in self.models.items():
            key = self.inputs[name]
            if key not in samples:
                samples[key] = take_vectors(self.eval_views[name], self.config.curve_vectors).to(
                    self.device, torch.float32
                )
            sample = samples[key]
            folder = save_dictionary(
                model,
                self.out_dir / name,
                metadata={
                    **self.metadata,
                    **self.own_metadata.get(name, {}),
                    "training": self.config.to_dict(),
                    "max_input_norm": self.norm_caps[self.inputs[name]],
                    "metrics": reports[name],
                    # Applied inside the dictionary (its input_scale), recorded so readers know it was used.
                    "input_normalization": {
                        "kind": "mean_norm_sqrt_d" if self.config.normalize_input else "none",
                        "input_scale": float(model.input_scale),
                    },
                },
            )
            write_json_atomic(folder / "metrics.json", {"step": self.step, **reports[name]}, indent=2)
            curves[name] = ad_re_curve(model, sample, self.config.curve_max_k)
            write_curve_csv(curves[name], folder / "ad_re_curve.csv")
            plot_ad_re_curves({name: curves[name]}, folder / "ad_re_curve.png")
        plot_ad_re_curves(curves, self.out_dir / "ad_re_curves.png")
        return reports


# TrainConfig fields that change the trained weights; the others may differ on resume. An unset
# (None) one is left out of the signature, so checkpoints written before it existed still resume.
_RESULT_FIELDS = (
    "epochs",
    "lr",
    "betas",
    "schedule",
    "seed",
    "precision",
    "normalize_input",
    "prepare_vectors",
    "max_norm_ratio",
)


def format_report(report: dict) -> str:
    """One readable line of an `evaluate` report."""
    line = (
        f"RE(det) {report['re_deterministic']:.4g}  FVU(det) {report['fvu_deterministic']:.4f}  "
        f"AD {report['ad_mean']:.2f}±{report['ad_std']:.2f} [{report['ad_method']}]  "
        f"dead {report['dead_fraction']:.3f}  dense {report['dense_fraction']:.3f}"
    )
    if "re_sample" in report:
        line += f"  RE(sample) {report['re_sample']:.4g}  γ {report['gamma']:.3g}"
    return line


def train(
    dictionaries: Mapping[str, Dictionary | DictionaryConfig],
    train_source: BatchSource,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    eval_source: BatchSource | Mapping[str, BatchSource] | None = None,
    metadata: dict | None = None,
    inputs: Mapping[str, str] | None = None,
    own_metadata: Mapping[str, dict] | None = None,
) -> TrainResult:
    """Train every dictionary in `dictionaries` (name → config or initialised model) on the same
    batches of `train_source`; evaluate on `eval_source` (held out; the train source if None)
    every `eval_every` steps and at the end; write everything to `out_dir` (module docstring).
    Resumes automatically from `out_dir`'s checkpoint. Raises NonFiniteLossError on NaN/Inf.
    `metadata` (provenance: hook, model, dataset, ...) is saved in every dictionary's config.json,
    with `own_metadata[name]` (e.g. its hook) on top.

    With `inputs` (dictionary name → key), `train_source` yields dicts of [B, d_key] tensors and
    each dictionary trains on its key; `train_source.view(key)` and `eval_source[key]` (or
    `.view(key)`) are that key's own sources, for set-up and evaluation. Under torchrun, a source
    with `per_rank_batches = True` yields each rank's own share of the step, which is not sliced."""
    if not dictionaries:
        raise ConfigError("nothing to train: pass at least one dictionary")
    config = config or TrainConfig()
    run = _Run(dict(dictionaries), train_source, out_dir, config, eval_source, metadata or {}, inputs, own_metadata)
    with _one_writer(run), reused_heap():  # each step reuses the last one's memory (interp_sae.heap)
        return _train(run, config)


def _one_writer(run: _Run) -> AbstractContextManager[None]:
    """Two runs writing one folder would overwrite each other's checkpoint (and each resume from
    the other's): the main rank holds the folder's lock for the whole run."""
    if not run.cluster.is_main:
        return nullcontext()
    return exclusive_folder(
        run.out_dir,
        TRAIN_LOCK_FILE,
        lambda holder: RunBusyError(
            f"another training run (pid {holder}) is writing to {run.out_dir}; wait for it to end "
            "(then this command resumes or reuses it), or train into another folder"
        ),
    )


def _train(run: _Run, config: TrainConfig) -> TrainResult:
    run.start()
    run_id = hashlib.sha1(json.dumps([str(run.out_dir.resolve()), run.signature]).encode()).hexdigest()[:12]
    log = RunLog(
        run.out_dir / "log.jsonl",
        config.wandb_project,
        run.signature,
        wandb_id=f"interp-sae-{run_id}",
        enabled=run.cluster.is_main,
    )
    try:
        run.run(log)
        metrics = run.finish(log) if run.cluster.is_main else {}
        run.cluster.barrier()
    finally:
        log.close()
    return TrainResult(run.models, metrics, run.out_dir, run.step)
