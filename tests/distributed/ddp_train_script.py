"""Train two SAEs on fixed data; run plainly or under `torchrun --nproc_per_node N`.
Usage: ddp_train_script.py OUT_DIR"""

import sys

import torch

import dictionaries as D


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1024, 2, generator=g) @ torch.randn(2, 16, generator=g) + 0.05 * torch.randn(
        1024, 16, generator=g
    )
    configs = {
        "sae_l1": D.make_config("sae_l1", d=16, n_latents=24, l1_coefficient=0.01),
        "sae_topk": D.make_config("sae_topk", d=16, n_latents=24, k=3),
    }
    config = D.TrainConfig(epochs=3, lr=3e-3, checkpoint_every=7, log_every=8, progress=False, device="cpu")
    D.train(
        configs,
        D.TensorBatchSource(data, 64, seed=1),
        out_dir,
        config,
        eval_source=D.TensorBatchSource(data[:256], 64, shuffle=False),
    )


if __name__ == "__main__":
    main(sys.argv[1])
