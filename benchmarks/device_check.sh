#!/usr/bin/env bash
# The one-command device proof, for the GPU machine:  make device-check   (or bash benchmarks/device_check.sh)
#
#   1. setup         installs what the machine lacks from ./wheelhouse (`make wheelhouse` builds it
#                    elsewhere; carry it), --no-index --no-deps, never touching its torch; checks imports
#   2. gpu-tests     pytest -m gpu tests/gpu: CUDA training = CPU, exact CUDA resume, bf16, CUDA harvest
#   3. harvest-bf16  benchmarks/harvest_throughput.py, Pythia-70m shape, model in bfloat16
#   4. harvest-fp32  the same, model in float32
#   5. train         benchmarks/train_throughput.py (full size on a GPU)
#   6. data-path     benchmarks/data_path.py: reader vs in-memory gather, training from the store vs memory
#   7. sparse-topk   benchmarks/sparse_topk.py: the sparse TopK step vs the dense one
#   8. compressed    benchmarks/compressed_store.py --small: the float8_e4m3 store vs bfloat16
#   9. on-the-fly    benchmarks/on_the_fly.py --small: training on the fly vs bare forward + step
#
# Each step's output is teed to $OUT/STEP.log ($OUT defaults to runs/device-check); every RESULT
# line goes to $OUT/RESULTS.txt with a STEP line per step. A failed or timed-out step does not stop
# the next; the script exits non-zero at the end if any failed. Each step has a time limit, and all
# together stay within DEVICE_CHECK_BUDGET_S (default 450 s, so the whole run ends inside 8 minutes).
#
# Settings (environment): OUT, DEVICE_CHECK_PYTHON (default: the first of python3, .venv/bin/python,
# python whose torch sees CUDA, else the first with torch), DEVICE_CHECK_DEVICE (cuda; cpu only to
# try the script on a machine without a GPU), DEVICE_CHECK_BUDGET_S, DEVICE_CHECK_TESTS (tests/gpu),
# HARVEST_TOKENS (262144), HARVEST_BATCH_SIZE (64).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
WHEELHOUSE=$REPO/wheelhouse
TOKENIZER_NAME=gpt-neox-20b-tokenizer.json
SHARED_TOKENIZER=$(dirname "$REPO")/shared/data/$TOKENIZER_NAME # where harvest_throughput.py looks
SITE=${TMPDIR:-/tmp}/interp-sae-device-site # wheels go here only if the Python's own site-packages refuse them
DEVICE=${DEVICE_CHECK_DEVICE:-cuda}

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export MPLBACKEND=Agg # TOKENIZERS_PARALLELISM stays unset: the harvest tokenises on every core
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}

pick_python() {
    if [[ -n ${DEVICE_CHECK_PYTHON:-} ]]; then
        echo "$DEVICE_CHECK_PYTHON"
        return
    fi
    local candidate first=""
    for candidate in python3 "$REPO/.venv/bin/python" python; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
        if [[ -z $first ]] && "$candidate" -c "import torch" >/dev/null 2>&1; then first=$candidate; fi
    done
    echo "${first:-python3}"
}
PY=$(pick_python)
export DEVICE_CHECK_PYTHON=$PY # the setup step (a child process) uses the same one

# --- step 1, run as `device_check.sh __setup` in its own process (so `timeout` can bound it) -------
if [[ ${1:-} == __setup ]]; then
    status=0
    echo "date $(date -u +%FT%TZ)  host $(hostname)  python $PY ($(command -v "$PY" || true))"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    fi
    if [[ -d $WHEELHOUSE ]]; then
        missing=()
        for wheel in "$WHEELHOUSE"/*.whl; do
            [[ -e $wheel ]] || continue
            dist=$(basename "$wheel" | cut -d- -f1)
            if ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" >/dev/null 2>&1; then
                missing+=("$wheel")
            fi
        done
        if ((${#missing[@]})); then
            echo "installing from wheelhouse (--no-index --no-deps): $(for w in "${missing[@]}"; do basename "$w"; done | tr '\n' ' ')"
            if ! "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --find-links "$WHEELHOUSE" "${missing[@]}"; then
                echo "installing into the Python's site-packages failed; installing into $SITE (on PYTHONPATH)"
                rm -rf "$SITE"
                "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$SITE" "${missing[@]}" || status=1
            fi
        else
            echo "wheelhouse: every package in it is installed already"
        fi
    else
        echo "no ./wheelhouse: run 'make wheelhouse' on a machine with network and carry the folder"
    fi
    if ! "$PY" -c "import importlib.metadata as m; m.version('interp-sae')" >/dev/null 2>&1; then
        # Optional: the repo is on PYTHONPATH anyway; this records the package version in provenance.
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" ||
            echo "editable install of interp-sae failed; the repo on PYTHONPATH serves instead"
    fi
    if [[ ! -f $SHARED_TOKENIZER && -f $WHEELHOUSE/$TOKENIZER_NAME ]]; then
        # The real Pythia tokenizer for the harvest benchmark, which otherwise falls back to a tiny one.
        { mkdir -p "$(dirname "$SHARED_TOKENIZER")" && cp "$WHEELHOUSE/$TOKENIZER_NAME" "$SHARED_TOKENIZER"; } ||
            echo "could not place the Pythia tokenizer at $SHARED_TOKENIZER; the benchmark uses its tiny fallback"
    fi
    "$PY" - "$DEVICE" <<'EOF' || status=1
import importlib.metadata as m
import sys

import torch

device = sys.argv[1]
problems = []
for module in ("transformer_lens.model_bridge", "activation_cache", "dictionaries", "interp_sae.cli"):
    try:
        __import__(module)
    except Exception as error:  # report every failing import, not only the first
        problems.append(f"import {module}: {type(error).__name__}: {error}")


def version(dist):
    try:
        return m.version(dist)
    except m.PackageNotFoundError:
        return "missing"


cuda = torch.cuda.is_available()
gpu = torch.cuda.get_device_name().replace(" ", "_") if cuda else "none"
if device == "cuda" and not cuda:
    problems.append("torch.cuda.is_available() is false")
dists = ("torch", "transformers", "transformer-lens", "datasets", "huggingface-hub", "numpy", "interp-sae")
print(
    f"RESULT step=setup python={sys.version.split()[0]} cuda={int(cuda)} gpu={gpu} torch_cuda={torch.version.cuda} "
    + " ".join(f"{d.replace('-', '_')}={version(d)}" for d in dists)
)
for problem in problems:
    print("PROBLEM", problem)
sys.exit(1 if problems else 0)
EOF
    exit $status
fi

# --- the steps -----------------------------------------------------------------------------------
OUT=${OUT:-runs/device-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/RESULTS.txt
BUDGET=${DEVICE_CHECK_BUDGET_S:-450}
START=$SECONDS
FAILED=()
: >"$SUMMARY"

# run_step NAME LIMIT_S COMMAND...: runs COMMAND for at most LIMIT_S seconds (less if the budget is
# nearly spent), output teed to $OUT/NAME.log; appends its STEP and RESULT lines to RESULTS.txt.
run_step() {
    local name=$1 limit=$2
    shift 2
    local log=$OUT/$name.log left=$((BUDGET - (SECONDS - START)))
    ((limit <= left - 5)) || limit=$((left - 5))
    if ((limit < 15)); then
        echo "STEP $name status=skipped reason=time_budget_spent" | tee -a "$SUMMARY"
        FAILED+=("$name")
        return 0
    fi
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    set +o errexit
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -o errexit
    local verdict=ok
    if ((rc == 124 || rc == 137)); then
        verdict=timeout
    elif ((rc != 0)); then
        verdict=failed
    fi
    grep -oE 'RESULT [A-Za-z_][A-Za-z0-9_.]*=.*' "$log" | sed "s/^/[$name] /" >>"$SUMMARY" || true
    if [[ $name == gpu-tests ]]; then
        local counts passed failed skipped errors
        counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran' "$log" | tail -1 || true)
        passed=$(grep -oE '[0-9]+ passed' <<<"$counts" | cut -d' ' -f1 || true)
        failed=$(grep -oE '[0-9]+ failed' <<<"$counts" | cut -d' ' -f1 || true)
        skipped=$(grep -oE '[0-9]+ skipped' <<<"$counts" | cut -d' ' -f1 || true)
        errors=$(grep -oE '[0-9]+ errors?' <<<"$counts" | cut -d' ' -f1 || true)
        echo "[$name] RESULT passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0} errors=${errors:-0}" >>"$SUMMARY"
        # On the GPU machine a skipped GPU test means CUDA was not there: that is a failure too.
        if [[ $DEVICE == cuda && $verdict == ok ]] && ((${skipped:-0} > 0 || ${passed:-0} == 0)); then
            verdict=failed
        fi
    fi
    echo "STEP $name status=$verdict rc=$rc seconds=$((SECONDS - t0))" | tee -a "$SUMMARY"
    [[ $verdict == ok ]] || FAILED+=("$name")
}

HARVEST_TOKENS=${HARVEST_TOKENS:-262144}
HARVEST_BATCH_SIZE=${HARVEST_BATCH_SIZE:-64}
TRAIN_ARGS=(--device "$DEVICE")
[[ $DEVICE == cuda ]] || TRAIN_ARGS+=(--small)
read -r -a TEST_PATHS <<<"${DEVICE_CHECK_TESTS:-tests/gpu}"

echo "device check: python $PY, device $DEVICE, logs in $OUT, budget ${BUDGET}s"
run_step setup 50 bash "$REPO/benchmarks/device_check.sh" __setup
run_step gpu-tests 120 env TOKENIZERS_PARALLELISM=false "$PY" -m pytest "${TEST_PATHS[@]}" -m gpu -s -q -rfEs -p no:cacheprovider
if [[ -f $SHARED_TOKENIZER ]]; then tokenizer=pythia; else tokenizer=tiny-fallback; fi
echo "[harvest] RESULT tokenizer=$tokenizer tokens=$HARVEST_TOKENS batch_size=$HARVEST_BATCH_SIZE" >>"$SUMMARY"
for precision in bf16:bfloat16 fp32:float32; do
    run_step "harvest-${precision%%:*}" 60 "$PY" benchmarks/harvest_throughput.py --model pythia70m-random \
        --tokens "$HARVEST_TOKENS" --batch-size "$HARVEST_BATCH_SIZE" --device "$DEVICE" --model-dtype "${precision#*:}"
done
run_step train 75 "$PY" benchmarks/train_throughput.py "${TRAIN_ARGS[@]}" --profile
run_step data-path 45 "$PY" benchmarks/data_path.py --device "$DEVICE" --latents 16384 --steps 20
run_step sparse-topk 45 "$PY" benchmarks/sparse_topk.py --budget 30
run_step compressed 60 "$PY" benchmarks/compressed_store.py --small --device "$DEVICE"
run_step on-the-fly 90 "$PY" benchmarks/on_the_fly.py --small --rounds 1 --device "$DEVICE"

if ((${#FAILED[@]})); then
    echo "OVERALL status=failed failed_steps=$(IFS=,; echo "${FAILED[*]}") seconds=$((SECONDS - START))" | tee -a "$SUMMARY"
    echo "--- $SUMMARY"
    cat "$SUMMARY"
    exit 1
fi
echo "OVERALL status=ok seconds=$((SECONDS - START))" | tee -a "$SUMMARY"
echo "--- $SUMMARY"
cat "$SUMMARY"
