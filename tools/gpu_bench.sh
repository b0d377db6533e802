#!/usr/bin/env bash
# The GPU figures of docs/speed.md, in one go (needs a CUDA GPU; ~10 min on an H100-class GPU):
#   bash tools/gpu_bench.sh [OUT_FILE]        (default: docs/gpu_bench-<commit>.md)
# Writes every table with the commands, the GPU, torch and the commit, so docs/speed.md can say which code
# version its GPU numbers are of.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out=${1:-docs/gpu_bench-$commit.md}
py=${PYTHON:-python}
run() {   # run CMD...: the command, then its output, into $out
  echo -e "\n\`\`\`\n\$ $*\n\`\`\`\n" >> "$out"
  "$@" 2>&1 | grep -v -e "^  round " -e "it/s" | tee -a "$out"
}
{
  echo "# GPU timings of commit $commit"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)," \
       "torch $($py -c 'import torch; print(torch.__version__)')"
} > "$out"
# fp32, bf16 autocast, channels-last: every variant, 224 and 96 px, steps interleaved in one process
run $py -m tools.bench --device cuda --sizes 224 96 --precisions fp32 bf16 fp32+cl bf16+cl --pieces --steps 20 --warmup 5
# N training processes side by side on the one GPU, fp32 and bf16
run $py -m tools.bench --device cuda --concurrent 1 2 4 8 --steps 30 --warmup 5
run $py -m tools.bench --device cuda --concurrent 1 2 4 8 --steps 30 --warmup 5 --amp
# torch.compile (compiling takes minutes; the warm-up steps absorb it)
run $py -m tools.bench --device cuda --compile --variants SupOnly Floor Hermes --precisions fp32 bf16 --steps 20 --warmup 5
echo "wrote $out"
