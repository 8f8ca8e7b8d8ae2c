"""Run a small harvest in its own process, optionally SIGKILLing itself at a chosen point.

Used by the resume tests: the kill is real (the kernel ends the process, no cleanup runs)
and lands at an exact place in the write path, e.g. the 3rd shard's bytes written but not
renamed. Usage: harvest_script.py MODEL_FOLDER CORPUS OUT [KILL_ON NTH [RANK]] [--tokens N]
[--store-dtype NAME]

Under torchrun, the kill applies to the process of rank RANK only (default: every process).

KILL_ON is one of:
  shard-fsync       a shard's temporary file is written and synced, not yet renamed
  shard-rename      a shard file is in place but not yet listed in the manifest
  manifest-rename   the new manifest's temporary file is written, not yet renamed
"""

import argparse
import os
import signal

from activation_cache import HarvestConfig, harvest
from interp_sae import atomic


def kill_on(kind: str, nth: int) -> None:
    calls = {"n": 0}

    def maybe_die(condition: bool) -> None:
        if condition:
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        maybe_die(kind == "shard-fsync" and ".safetensors." in name and name.endswith(".tmp"))

    def replace(src, dst):
        if kind == "manifest-rename":
            maybe_die(str(dst).endswith("manifest.json"))
        real_replace(src, dst)
        if kind == "shard-rename":
            maybe_die(str(dst).endswith(".safetensors"))

    atomic.os.fsync = fsync  # every file interp-sae commits goes through interp_sae.atomic
    atomic.os.replace = replace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("out")
    parser.add_argument("kill", nargs="*", help="KILL_ON NTH [RANK]")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--store-dtype", default="float32")
    args = parser.parse_args()
    if args.kill and (len(args.kill) < 3 or os.environ.get("RANK", "0") == args.kill[2]):
        kill_on(args.kill[0], int(args.kill[1]))
    config = HarvestConfig(
        out=args.out,
        model=args.model,
        hooks=["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"],
        dataset=args.corpus,
        tokens=args.tokens,
        context_length=16,
        shard_tokens=160,
        batch_size=4,
        store_dtype=args.store_dtype,
        device="cpu",
    )
    harvest(config, progress=False)


if __name__ == "__main__":
    main()
