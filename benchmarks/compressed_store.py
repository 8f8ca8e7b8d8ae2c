"""What a float8_e4m3 store costs against a bfloat16 one: disk, vector error, dictionary quality.

    python benchmarks/compressed_store.py [--small] [--tokens N] [--device auto]

The same tokens (the built-in Python docs, packed in rows of 128) go through Pythia-70m's shape
with random weights (d = 512; offline) into two stores that differ only in ``--store-dtype``:
``bfloat16`` and ``float8_e4m3``. Then one dictionary (topk_aux, same config, same seed, so the
same initial weights and the same batch order) is trained on the train side of each, and both
are evaluated on the *same* held-out vectors: the validation side of the bfloat16 store. The
comparison is fair that way: it measures what training on fp8 vectors costs the dictionary,
not how much noisier the fp8 held-out vectors are.

* disk_ratio: bytes of the activation tensors in the fp8 store (values and per-vector scales)
  over those of the bf16 store (token and document ids, the same in both, left out). Target ≤ 0.52.
* fvu_rel_change: |FVU_fp8 − FVU_bf16| / FVU_bf16 on the held-out bf16 vectors. Target < 0.01.
* vector_rel_error: Σ‖x − x̂‖² / Σ‖x‖² of the fp8 store against the float32 activations, as its
  manifest records it (the bf16 store's is printed beside it).

``--small`` (65k tokens, 1024 latents, batches of 512, two epochs: 238 steps) takes under five
minutes on a busy 2-core CPU (2m40s of CPU time). The last line is ``RESULT disk_ratio=... fvu_rel_change=... vector_rel_error=...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import dictionaries as D
from activation_cache import ActivationStore, HarvestConfig, ShuffledBatches, Split, harvest
from activation_cache.corpus import BUILTIN_PYTHON_DOCS, CorpusSpec, iter_documents
from activation_cache.store_format import safetensors_layout
from activation_cache.vector_codec import scale_name
from interp_sae.runtime import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest_throughput import pythia70m_random

HOOK = "blocks.3.hook_resid_post"
DTYPES = ("bfloat16", "float8_e4m3")


def activation_bytes(store: ActivationStore) -> int:
    """Bytes of the hook's tensor and, in a scaled store, of its scales, over every shard."""
    total = 0
    for record in store.manifest.shards:
        path = store.root / record.file
        with open(path, "rb") as handle:
            layout = safetensors_layout(handle.read(1 << 20))
        total += sum(span.end - span.start for name, span in layout.items() if name in (HOOK, scale_name(HOOK)))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="65k tokens, 1024 latents: a few CPU minutes")
    parser.add_argument("--tokens", type=int, default=None, help="default: 1,048,576 (65,536 with --small)")
    parser.add_argument("--latents", type=int, default=None, help="default: 4096 (1024 with --small)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 3 (2 with --small)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 1024 (512 with --small)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokens = args.tokens or (65_536 if args.small else 1_048_576)
    latents = args.latents or (1024 if args.small else 4096)
    epochs = args.epochs or (2 if args.small else 3)
    batch_size = args.batch_size or (512 if args.small else 1024)
    began = time.perf_counter()
    device = resolve_device(args.device)

    lm = pythia70m_random(str(device), "float32")
    split = Split()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text(
            "".join(json.dumps({"text": text}) + "\n" for _, text in iter_documents(CorpusSpec(BUILTIN_PYTHON_DOCS)))
        )
        stores = {}
        for dtype in DTYPES:
            start = time.perf_counter()
            config = HarvestConfig(out=str(Path(tmp) / dtype), model=lm.info["id"], hooks=[HOOK], dataset=str(corpus),
                                   tokens=tokens, context_length=128, store_dtype=dtype, device=str(device))  # fmt: skip
            harvest(config, model=lm, progress=False)
            stores[dtype] = ActivationStore(config.out)
            print(
                f"harvested {stores[dtype].manifest.tokens:,} tokens into {dtype} in {time.perf_counter() - start:.1f}s"
            )
        bf16, fp8 = stores["bfloat16"], stores["float8_e4m3"]
        assert [s.first_row for s in bf16.manifest.shards] == [s.first_row for s in fp8.manifest.shards]

        held_out = ShuffledBatches(bf16, HOOK, batch_size, side="validation", split=split, device=device)
        metrics = {}
        for dtype, store in stores.items():
            start = time.perf_counter()
            train = ShuffledBatches(store, HOOK, batch_size, side="train", split=split, seed=args.seed, device=device)
            config = D.make_config("topk_aux", d=store.d(HOOK), n_latents=latents, k=32)
            train_config = D.TrainConfig(epochs=epochs, lr=5e-4, seed=args.seed, device=str(device),
                                         progress=False, checkpoint_every=0, curve_vectors=256)  # fmt: skip
            result = D.train({"topk_aux": config}, train, Path(tmp) / f"dict-{dtype}", train_config, held_out)
            metrics[dtype] = result.metrics["topk_aux"]
            print(
                f"topk_aux on {dtype}: {result.steps} steps in {time.perf_counter() - start:.0f}s; held-out bf16 "
                f"FVU {metrics[dtype]['fvu_deterministic']:.5f}, L0 {metrics[dtype]['l0_mean']:.2f}"
            )

        disk_ratio = activation_bytes(fp8) / activation_bytes(bf16)
        fvu = {dtype: float(metrics[dtype]["fvu_deterministic"]) for dtype in DTYPES}
        fvu_rel_change = abs(fvu["float8_e4m3"] - fvu["bfloat16"]) / fvu["bfloat16"]
        errors = {dtype: stores[dtype].manifest.reconstruction_error[HOOK] for dtype in DTYPES}
        print(
            f"activation bytes fp8/bf16 = {disk_ratio:.4f} (target <= 0.52); whole store "
            f"{fp8.manifest.bytes / bf16.manifest.bytes:.4f} (token and document ids included)"
        )
        print(f"relative error of the stored vectors against float32: bf16 {errors['bfloat16']:.3e}, "
              f"fp8 {errors['float8_e4m3']:.3e}")  # fmt: skip
        print(f"FVU change {fvu_rel_change:.4%} (target < 1%); L0 bf16 {metrics['bfloat16']['l0_mean']:.2f}, "
              f"fp8 {metrics['float8_e4m3']['l0_mean']:.2f}")  # fmt: skip
    print(
        f"RESULT disk_ratio={disk_ratio:.4f} fvu_rel_change={fvu_rel_change:.5f} "
        f"vector_rel_error={errors['float8_e4m3']:.4e} fvu_bf16={fvu['bfloat16']:.5f} "
        f"fvu_fp8={fvu['float8_e4m3']:.5f} l0_bf16={metrics['bfloat16']['l0_mean']:.2f} "
        f"l0_fp8={metrics['float8_e4m3']['l0_mean']:.2f} bf16_vector_rel_error={errors['bfloat16']:.4e} "
        f"tokens={fp8.manifest.tokens} device={device.type} seconds={time.perf_counter() - began:.0f}"
    )


if __name__ == "__main__":
    main()
