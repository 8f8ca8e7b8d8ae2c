"""Helper for test_dict_trainer: train a fixed small run in OUT_DIR (resuming if a checkpoint
exists). Run as `python resume_run.py OUT_DIR [KILL_ON NTH]`, where KILL_ON makes the process
SIGKILL itself at an exact point of its NTH checkpoint write (a real kill: no cleanup runs):

  checkpoint-written   the checkpoint's temporary file is complete, not yet renamed into place
  checkpoint-renamed   the new checkpoint is in place
"""

import os
import signal
import sys

import torch

import dictionaries as D
from interp_sae import atomic


def kill_on(kind: str, nth: int) -> None:
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        if str(dst).endswith(D.trainer.CHECKPOINT_FILE):
            calls["n"] += 1
            if calls["n"] == nth and kind == "checkpoint-written":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if calls["n"] == nth and kind == "checkpoint-renamed":
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            real_replace(src, dst)

    atomic.os.replace = replace


def main(out_dir: str) -> None:
    torch.set_num_threads(1)  # tiny model: one thread is faster and keeps runs comparable
    data = torch.randn(2048, 8, generator=torch.Generator().manual_seed(0))
    configs = {
        "vaease": D.make_config("vaease", d=8, n_latents=12, init_log_gamma=-0.5),
        "sae_l1": D.make_config("sae_l1", d=8, n_latents=12),
        "topk_aux": D.make_config("topk_aux", d=8, n_latents=12, k=2, aux_k=4, dead_after_tokens=64),
    }
    config = D.TrainConfig(epochs=4, lr=3e-3, checkpoint_every=10, log_every=50, progress=False, normalize_input=True)
    D.train(configs, D.TensorBatchSource(data, 64, seed=1), out_dir, config)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        kill_on(sys.argv[2], int(sys.argv[3]))
    main(sys.argv[1])
