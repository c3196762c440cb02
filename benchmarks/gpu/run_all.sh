#!/usr/bin/env bash
# The GPU checks of issues #3 and #4 as one prepared script per device call.
#
#   bash benchmarks/gpu/fetch_wheels.sh                       # here, once: .whl/ (about 14 MB)
#   python -m data_pipeline.build --config=pop909 --manual_dir=../shared/data/pop909 --data_dir=runs/pop909/tfds
#   device run, carry [".whl", "runs/pop909/tfds"]:
#     bash benchmarks/gpu/run_all.sh bench     # MFU (paper, bf16) + generation speed, about 4 min
#     bash benchmarks/gpu/run_all.sh train     # VAE, SFS (the authors' model and recipe), Flat (GPT-like), and
#                                              # SFS v1 (this project's first design, segment positions, aligned
#                                              # Ref) on POP909 under a wall-clock budget, then Flat scored on
#                                              # SFS's validation windows
#
# Everything lands in $OUT (the device tool brings it back): one log per step and the
# metrics.jsonl of each training run (the learning curves; `python -m benchmarks.gpu.curves`
# plots them here). Budgets come from the environment so a session can fit its lease:
# VAE_SECONDS, SFS_SECONDS, FLAT_SECONDS, SFS_V1_SECONDS (training loop time of each run, compile excluded).
# SIZE=tiny runs the same steps on a CPU in a minute (how the script itself is checked).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sfs_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
SIZE=${SIZE:-paper}
DATASET=${DATASET:-runs/pop909/tfds/sfs_songs/pop909/1.0.0}
RUNS=${RUNS:-/tmp/sfs_gpu_runs}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # progress bars would flood the logs brought back
if [ -d .whl ] && ! "$PY" -c "import miditok, grain, tensorflow_datasets" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 3; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT/devices.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$OUT/devices.txt"

step() {  # step NAME CMD...: run, keep its log, go on after a failure (the later steps still report)
  local name=$1; shift
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local start=$SECONDS
  "$@" 2>&1 | grep -v "checkpoint_manager.py\|Sharding info" | tee -a "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}

case ${1:-bench} in
  bench)
    if [ "$SIZE" = paper ]; then BATCH=32; GEN_BATCHES=1,64; else BATCH=4; GEN_BATCHES=1,2; fi
    step throughput_sfs "$PY" -m benchmarks.train_throughput --size="$SIZE" --compute_dtype=bfloat16 \
      --batch_size=$BATCH --steps=10
    step throughput_flat "$PY" -m benchmarks.train_throughput --size="$SIZE" --model=flat \
      --compute_dtype=bfloat16 --batch_size=$BATCH --steps=10
    step generation "$PY" -m benchmarks.generation --size="$SIZE" --batch_sizes=$GEN_BATCHES \
      --no_cache_tokens=64 --repeats=3
    ;;
  train)
    [ -d "$DATASET" ] || { echo "no dataset at $DATASET: carry runs/pop909/tfds (see the header)" >&2; exit 2; }
    # The defaults are the authors' recipes (no warmup); a short VAE run scales its KL cycle to the run.
    if [ "$SIZE" = paper ]; then
      VAE=(--config.train.num_steps=3000 --config.vae_beta_cycle_steps=750 --config.vae_beta_start_step=0
           --config.train.eval_every=500 --config.train.checkpoint_every=500)
      LM=(--config.train.num_steps=4000 --config.train.eval_every=250
          --config.train.checkpoint_every=1000 --config.train.log_every=50)
    else
      VAE=(--config.train.num_steps=4); LM=(--config.train.num_steps=4)
    fi
    step vae "$PY" -m experiments.train --config="experiments/configs/bar_vae.py:size=$SIZE" \
      --config.data.dataset_dir="$DATASET" --config.train.max_train_seconds="${VAE_SECONDS:-90}" "${VAE[@]}" \
      --workdir="$RUNS/vae"
    cp "$RUNS/vae/metrics.jsonl" "$OUT/vae_metrics.jsonl" 2>/dev/null
    # sfs_v1: this project's first design and recipe with segment-relative cross-attention positions and the
    # window-aligned Ref crop, the configuration that learnt to use its contexts on the CPU (README results).
    for run in sfs flat sfs_v1; do
      model=${run%_v1}; arch=""; extra=()
      [ "$run" = sfs_v1 ] && arch=",arch=v1,recipe=v1" && extra=(--config.model.cross_attention_positions=segment
                                                                   --config.examples.ref_crop=aligned)
      budget_var=${run^^}_SECONDS
      step "$run" "$PY" -m experiments.train --config="experiments/configs/sfs.py:size=$SIZE,model=$model$arch" \
        --config.data.dataset_dir="$DATASET" --config.vae_workdir="$RUNS/vae" \
        --config.train.max_train_seconds="${!budget_var:-150}" "${LM[@]}" ${extra[@]+"${extra[@]}"} --workdir="$RUNS/$run"
      cp "$RUNS/$run/metrics.jsonl" "$OUT/${run}_metrics.jsonl" 2>/dev/null
    done
    # Flat (GPT-like) validates on its own song windows: score it on SFS's validation windows too.
    step flat_on_sfs_windows "$PY" -m experiments.context_use --workdir="$RUNS/flat" --variants=none \
      --window_scope=segment
    ;;
  *) echo "usage: $0 bench|train" >&2; exit 2 ;;
esac
ls -la "$OUT"
