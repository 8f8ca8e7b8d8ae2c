"""SAELens interop check, both ways, against SAELens itself.

    python benchmarks/saelens_check.py [--venv /tmp/saelens-venv] [--sae-lens sae-lens] [--work DIR]

SAELens pins an older TransformerLens than this project, so it runs in a virtual environment of
its own, built once at --venv (torch==2.13.0, the CPU build on this machine's disk, then sae-lens
from PyPI; the project's .venv is never touched). This same file, run there with --child, is the
SAELens side.

- export: random dictionaries of every exportable architecture, with input scale 0.37 so that
  folding it into the weights is exercised, are exported with `interp_sae.saelens`; SAELens loads
  each with `SAE.load_from_disk` and encodes and decodes the same inputs as ours. BatchTopK and
  Matryoshka (exported as "jumprelu") first estimate their inference threshold from training
  batches of those inputs; JumpReLU and Gated get random thresholds and gate/magnitude biases.
- import: SAELens builds random SAEs (standard, topk, jumprelu and gated, with b_dec subtracted
  from the input or not, topk with rescale_acts_by_decoder_norm) and saves them with
  `save_model`; it also builds BatchTopK and Matryoshka BatchTopK training SAEs, lets them
  estimate their threshold on the inputs and saves them for inference (`save_inference_model`,
  which writes "jumprelu"). We import every folder and encode and decode the same inputs as
  SAELens's loaded SAE did.

The table compares the outputs. Last line: RESULT key=value ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH = "torch==2.13.0"  # pinned: this CPU build lies on disk; an unpinned torch downloads GBs
D, N_LATENTS, K, N_INPUTS, INPUT_SCALE = 64, 512, 16, 512, 0.37
EXPORTS = {  # name -> (our architecture, config fields)
    "sae_l1": ("sae_l1", {}),
    "sae_topk": ("sae_topk", {"k": K}),
    "topk_aux": ("topk_aux", {"k": K}),
    "wsae_relu": ("wsae", {"encoder": "relu"}),
    "wsae_topk": ("wsae", {"encoder": "topk", "k": K}),
    "batchtopk": ("batchtopk", {"k": K, "threshold_beta": 0.5}),
    "matryoshka": ("matryoshka", {"k": K, "threshold_beta": 0.5, "prefixes": [64, 128]}),
    "jumprelu": ("jumprelu", {}),
    "gated": ("gated", {}),
}
THRESHOLD_BATCHES = 4  # training batches from which BatchTopK and Matryoshka estimate their threshold
IMPORTS = {  # name -> SAELens architecture and config fields
    "standard": ("standard", {"apply_b_dec_to_input": True}),
    "standard_no_bdec": ("standard", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {"apply_b_dec_to_input": True, "k": K}),
    "topk_rescaled": ("topk", {"apply_b_dec_to_input": False, "k": K, "rescale_acts_by_decoder_norm": True}),
    "jumprelu": ("jumprelu", {"apply_b_dec_to_input": True}),
    "jumprelu_no_bdec": ("jumprelu", {"apply_b_dec_to_input": False}),
    "gated": ("gated", {"apply_b_dec_to_input": True}),
    "gated_no_bdec": ("gated", {"apply_b_dec_to_input": False}),
    # SAELens training SAEs, saved for inference as jumprelu with their estimated threshold
    "batchtopk_trained": ("batchtopk", {"apply_b_dec_to_input": True, "k": K}),
    "matryoshka_trained": (
        "matryoshka_batchtopk",
        {"apply_b_dec_to_input": True, "k": K, "matryoshka_widths": [64, 128, N_LATENTS]},
    ),
}
METADATA = {"hook_name": "blocks.3.hook_resid_post", "model_name": "EleutherAI/pythia-70m-deduped", "context_size": 128}
TOLERANCE = 1e-5  # max |difference| relative to the largest |output|: float32 rounding of folded factors


def ensure_venv(venv: Path, sae_lens: str) -> Path:
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import sae_lens"], check=False, capture_output=True).returncode == 0
    ):
        return python
    print(f"building {venv} ({TORCH}, {sae_lens}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    for requirement in (TORCH, sae_lens):  # torch first, so that sae-lens keeps the pinned build
        subprocess.run([python, "-m", "pip", "install", "-q", requirement], check=True)
    return python


def save_outputs(path: Path, features, recon) -> None:
    from safetensors.torch import save_file

    save_file({"features": features.contiguous(), "recon": recon.contiguous()}, path)


def our_side_before(work: Path) -> None:
    """The inputs; our dictionaries, their exports and their outputs."""
    import torch
    from safetensors.torch import save_file

    import dictionaries
    from interp_sae.saelens import export_saelens

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_INPUTS, D, generator=generator) / INPUT_SCALE  # raw units: the scale maps them to ~1
    save_file({"x": x}, work / "inputs.safetensors")
    for seed, (name, (architecture, fields)) in enumerate(EXPORTS.items()):
        model = dictionaries.create(
            dictionaries.make_config(architecture, d=D, n_latents=N_LATENTS, **fields), seed=seed
        )
        with torch.no_grad():
            model.input_scale.fill_(INPUT_SCALE)
            model.decoder.bias.copy_(torch.randn(D, generator=generator) * 0.1)  # non-zero, so b_dec is checked
            if architecture == "wsae":  # Γ weights the training loss only: the export must not depend on it
                model.reconstruction_weights.copy_(torch.rand(D, generator=generator) + 0.5)
            if architecture == "jumprelu":
                model.threshold_parameter.copy_(torch.rand(N_LATENTS, generator=generator))
            if architecture == "gated":
                for parameter in (model.b_gate, model.b_mag, model.r_mag):
                    parameter.copy_(torch.randn(N_LATENTS, generator=generator) * 0.5)
            if architecture in ("batchtopk", "matryoshka"):  # the threshold as training estimates it
                model.train()
                for batch in x.chunk(THRESHOLD_BATCHES):
                    model.loss(batch)
                model.eval()
            features = model.encode(x)
            save_outputs(work / f"ours_{name}.safetensors", features, model.decode(features))
        dictionaries.save_dictionary(model, work / "ours" / name)
        export_saelens(work / "ours" / name, work / "exported" / name, metadata=METADATA)


def saelens_side(work: Path) -> None:
    """In the SAELens venv: run our exports, and make, save and run SAELens's own SAEs."""
    import sae_lens
    import torch
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata
    from safetensors.torch import load_file

    x = load_file(work / "inputs.safetensors")["x"]
    summary = {"sae_lens": sae_lens.__version__, "torch": torch.__version__, "classes": {}, "hook_names": {}}
    with torch.no_grad():
        for name in EXPORTS:
            sae = SAE.load_from_disk(work / "exported" / name)
            save_outputs(work / f"saelens_{name}.safetensors", sae.encode(x), sae.decode(sae.encode(x)))
            summary["classes"][f"export/{name}"] = type(sae).__name__
            summary["hook_names"][f"export/{name}"] = sae.cfg.metadata.hook_name
        generator = torch.Generator().manual_seed(1)
        classes = {
            "standard": (StandardSAE, StandardSAEConfig),
            "topk": (TopKSAE, TopKSAEConfig),
            "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
            "gated": (GatedSAE, GatedSAEConfig),
            "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
            "matryoshka_batchtopk": (MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig),
        }
        for name, (architecture, fields) in IMPORTS.items():
            sae_class, config_class = classes[architecture]
            sae = sae_class(config_class(d_in=D, d_sae=N_LATENTS, metadata=SAEMetadata(**METADATA), **fields))
            for parameter in sae.parameters():  # random, decoder rows of uneven norm, non-zero biases and thresholds
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
            folder = work / "saelens_made" / name
            if isinstance(sae, BatchTopKTrainingSAE):  # its training estimates the threshold it saves as jumprelu
                trained = type(sae).__name__
                for batch in x.chunk(THRESHOLD_BATCHES):
                    sae.update_topk_threshold(sae.encode(batch))
                sae.save_inference_model(folder)
                sae = SAE.load_from_disk(folder)
                summary["classes"][f"import/{name}"] = f"{trained} → {type(sae).__name__}"
            else:
                sae.save_model(folder)
                summary["classes"][f"import/{name}"] = type(sae).__name__
            save_outputs(work / f"made_{name}.safetensors", sae.encode(x), sae.decode(sae.encode(x)))
    (work / "saelens_summary.json").write_text(json.dumps(summary))


def our_side_after(work: Path) -> dict[str, dict]:
    """Import SAELens's SAEs, run them, and compare every pair of outputs."""
    import torch
    from safetensors.torch import load_file

    import dictionaries
    from interp_sae.saelens import import_saelens

    summary = json.loads((work / "saelens_summary.json").read_text())
    x = load_file(work / "inputs.safetensors")["x"]
    pairs = {}
    for name in EXPORTS:
        pairs[f"export/{name}"] = (
            "export",
            load_file(work / f"ours_{name}.safetensors"),
            load_file(work / f"saelens_{name}.safetensors"),
        )
    for name in IMPORTS:
        model = dictionaries.load_dictionary(import_saelens(work / "saelens_made" / name, work / "imported" / name))
        with torch.no_grad():
            features = model.encode(x)
            ours = {"features": features, "recon": model.decode(features)}
        pairs[f"import/{name}"] = ("import", ours, load_file(work / f"made_{name}.safetensors"))
        summary["hook_names"][f"import/{name}"] = json.loads((work / "imported" / name / "config.json").read_text())[
            "metadata"
        ]["hook_name"]
        summary["classes"][f"import/{name}"] += f" → {model.architecture}"
    rows = {}
    for key, (direction, ours, theirs) in pairs.items():
        diff = {part: (theirs[part] - ours[part]).abs().max().item() for part in ("features", "recon")}
        rows[key] = {
            "direction": direction,
            "classes": summary["classes"][key],
            "abs_features": diff["features"],
            "abs_recon": diff["recon"],
            "rel": max(diff[part] / ours[part].abs().max().item() for part in diff),
            "same_active_sets": torch.equal(theirs["features"] != 0, ours["features"] != 0),
            "hook_kept": summary["hook_names"][key] == METADATA["hook_name"],
        }
    return {"summary": summary, "rows": rows}


def report(result: dict, work: Path, venv: Path) -> bool:
    summary, rows = result["summary"], result["rows"]
    print(
        f"sae-lens {summary['sae_lens']}, torch {summary['torch']} (in {venv}); d={D}, κ={N_LATENTS}, k={K}, "
        f"input scale {INPUT_SCALE}, {N_INPUTS} inputs; files in {work}"
    )
    header = (
        f"{'direction':<9} {'case':<18} {'classes':<58} {'max|Δf|':>9} {'max|Δx̂|':>9} {'max rel':>8} "
        f"{'same active':>11} {'hook kept':>9}"
    )
    print(header)
    print("-" * len(header))
    for key, row in rows.items():  # key: "export/NAME" or "import/NAME"
        print(
            f"{row['direction']:<9} {key.split('/', 1)[1]:<18} {row['classes']:<58} {row['abs_features']:>9.2e} {row['abs_recon']:>9.2e} "
            f"{row['rel']:>8.1e} {row['same_active_sets']!s:>11} {row['hook_kept']!s:>9}"
        )
    ok = all(row["rel"] <= TOLERANCE and row["same_active_sets"] and row["hook_kept"] for row in rows.values())
    exported = sum(row["direction"] == "export" for row in rows.values())
    print(
        f"RESULT ok={ok} exported={exported} imported={len(rows) - exported} sae_lens={summary['sae_lens']} "
        f"torch={summary['torch']} max_abs_diff_features={max(r['abs_features'] for r in rows.values()):.3g} "
        f"max_abs_diff_recon={max(r['abs_recon'] for r in rows.values()):.3g} "
        f"max_rel_diff={max(r['rel'] for r in rows.values()):.3g} tolerance={TOLERANCE}"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--venv", type=Path, default=Path("/tmp/saelens-venv"), help="SAELens virtual environment (built if missing)."
    )
    parser.add_argument("--sae-lens", default="sae-lens", help="pip requirement for SAELens, e.g. 'sae-lens==6.54.12'.")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the files (default: a new temporary one).")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the SAELens side
    args = parser.parse_args()
    if args.child is not None:
        saelens_side(args.child)
        return

    python = ensure_venv(args.venv, args.sae_lens)
    work = (args.work or Path(tempfile.mkdtemp(prefix="saelens-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    our_side_before(work)
    subprocess.run([python, Path(__file__).resolve(), "--child", work], check=True, cwd=work)
    sys.exit(0 if report(our_side_after(work), work, args.venv) else 1)


if __name__ == "__main__":
    main()
