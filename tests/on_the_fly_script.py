"""Train on the fly in its own process, recording every batch's documents, optionally SIGKILLing
itself when its NTH checkpoint is written but not yet in place (a real kill: no cleanup runs),
so the previous checkpoint stands and the steps since it are done again.

Usage: on_the_fly_script.py MODEL_FOLDER CORPUS OUT RECORD [NTH]

RECORD gets one JSON line per batch handed to the trainer: its epoch, its index in the epoch
and the (document id, position) of each vector, so the test can check which tokens were trained on.
Under torchrun each rank records into RECORD.rankN, and only rank 0 (which writes the checkpoints)
can be killed.
"""

import json
import os
import signal
import sys

import torch

import dictionaries as D
from activation_cache.stream import ActivationStream
from interp_sae import atomic
from interp_sae.train_on_the_fly import OnTheFlyConfig, train_on_the_fly

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]


def kill_before_checkpoint(nth: int) -> None:
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        if str(dst).endswith(D.trainer.CHECKPOINT_FILE):
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    atomic.os.replace = replace


def recording_stream(record_path: str) -> type[ActivationStream]:
    class Recording(ActivationStream):
        def _next_batch(self):
            batch = super()._next_batch()
            with open(record_path, "a") as record:
                record.write(json.dumps([self.epoch, self.emitted - 1, self.last_origin.tolist()]) + "\n")
            return batch

    return Recording


def main(model: str, corpus: str, out: str, record: str, nth: str | None = None) -> None:
    torch.set_num_threads(1)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        record = f"{record}.rank{os.environ['RANK']}"
    if nth is not None:
        kill_before_checkpoint(int(nth))
    settings = OnTheFlyConfig(
        model=model,
        hooks=HOOKS,
        dataset=corpus,
        tokens=1024,
        context_length=16,
        forward_rows=4,
        batch_size=32,
        buffer="96",
        loss_rows=8,
    )
    train_config = D.TrainConfig(
        epochs=2, checkpoint_every=7, progress=False, device="cpu", prepare_vectors=64, eval_max_vectors=256
    )
    configs = lambda d: {  # noqa: E731
        "sae_topk": D.make_config("sae_topk", d=d, n_latents=16, k=4),
        "vaease": D.make_config("vaease", d=d, n_latents=16, init_log_gamma=-0.5),
    }
    train_on_the_fly(settings, configs, out, train_config, say=print, stream_factory=recording_stream(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
