#!/usr/bin/env bash
# Many seeds of a few train.py configurations side by side on one GPU, within a wall-time budget, for the
# from-scratch check of issue 27 (BUSI-72, 64 px, batch 4, ResNet-18 U-Net, 2,000 steps, random weights):
#   bash tools/gpu_seeds.sh DATA_ROOT OUT_DIR BUDGET_S JOBS "SEEDS" [NAME OPTIONS]...
# e.g. bash tools/gpu_seeds.sh data/BUSI runs/g27 480 16 "0 1 2 3 4 5" suponly "--no-dtcl --no-ias --no-itcl" hermes ""
# Runs are queued seed by seed (every configuration of seed 0, then of seed 1, ...), so whatever the budget
# allows finishes as whole pairs; JOBS run at once, each on one CPU thread. Under CUDA MPS (started here when
# nvidia-cuda-mps-control is present and a test allocation works) their kernels share the GPU instead of
# taking turns. No run starts after LAST_START s (default BUDGET_S - 150); at BUDGET_S the unfinished runs are stopped (their log.csv keeps the evaluations so far).
# Writes OUT_DIR/summary.txt: the paired comparison of the finished seeds (evaluate.py --compare).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$1 out=$2 budget=$3 jobs=$4 seeds=$5; shift 5
names=() ; opts=()
while [ $# -ge 2 ]; do names+=("$1"); opts+=("$2"); shift 2; done
py=${PYTHON:-python3}
mkdir -p "$out"
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p /tmp/mps-pipe /tmp/mps-log
  if timeout 20 nvidia-cuda-mps-control -d && timeout 60 "$py" -c "import torch; print(torch.ones(2, device='cuda').sum().item())"; then
    log "CUDA MPS on"
  else
    echo quit | timeout 10 nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; log "CUDA MPS off (failed)"
  fi
else
  log "CUDA MPS off"
fi

queue=()
for s in $seeds; do for i in "${!names[@]}"; do queue+=("$s $i"); done; done
run_one() {  # run_one SEED INDEX
  local s=$1 i=$2 name=${names[$2]} left=$(( budget - ($(date +%s) - t0) ))
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout $(( left > 1 ? left : 1 )) "$py" train.py \
    --data-root "$root" --dataset busi --labels 72 --image-size 64 --batch-size 4 --iters "${ITERS:-2000}" --eval-every "${EVAL_EVERY:-250}" \
    --no-pretrained --seg-encoder resnet18 --device "${DEVICE:-cuda}" --seed "$s" --out "$out/$name-s$s" ${opts[$i]} \
    > "$out/$name-s$s.log" 2>&1
  echo "$name-s$s rc=$? $(( $(date +%s) - t0 )) s" >> "$out/done.txt"
}
n=0
for q in "${queue[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  [ $(( $(date +%s) - t0 )) -ge "${LAST_START:-$(( budget - 150 ))}" ] && { log "not starting '$q' and later: too late"; break; }
  run_one $q &
  n=$(( n + 1 ))
  if [ $n = $(( jobs < ${#queue[@]} ? jobs : ${#queue[@]} )) ]; then
    sleep "${CHECK_AFTER:-45}"   # the first wave is up: stop at once if it is failing, so a fix can be rerun
    if grep -l Traceback "$out"/*.log > /dev/null 2>&1; then
      log "a run failed:"; tail -n 30 "$(grep -l Traceback "$out"/*.log | head -1)"; kill $(jobs -p) 2>/dev/null; exit 2
    fi
    log "first wave running: $(tail -qn 1 "$out"/*.log | head -3 | tr '\n' ' ')"
  fi
done
wait
log "all done or stopped"; cat "$out/done.txt"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
command -v nvidia-cuda-mps-control > /dev/null && [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | timeout 10 nvidia-cuda-mps-control

# the paired comparison over seeds whose runs all finished
done_seeds=()
for s in $seeds; do
  ok=1; for n in "${names[@]}"; do [ -f "$out/$n-s$s/metrics.json" ] || ok=0; done
  [ $ok = 1 ] && done_seeds+=("$s")
done
{
  echo "finished seeds: ${done_seeds[*]:-none}"
  if [ ${#done_seeds[@]} -gt 0 ]; then
    args=()
    for n in "${names[@]}"; do
      args+=("$n=$(printf "$out/$n-s%s," "${done_seeds[@]}" | sed 's/,$//')")
    done
    "$py" evaluate.py --compare "${args[@]}" --baseline "${names[0]}"
  fi
} 2>&1 | tee "$out/summary.txt"
