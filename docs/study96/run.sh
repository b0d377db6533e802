#!/bin/bash
# usage: bash run.sh NAME SEED [train.py options]; BUSI-72, 96 px, batch 4, 3,000 steps, defaults (recipe auto = scratch)
cd "$(dirname "$0")/../.."   # the repository root
NAME=$1; S=$2; shift 2
mkdir -p runs/s96; OUT=runs/s96/$NAME-s$S
R=""; [ -f $OUT/checkpoint.pt ] && R="--resume"
OMP_NUM_THREADS=1 python train.py --data-root ../shared/data/BUSI/Dataset_BUSI_with_GT --dataset busi --labels 72 \
  --image-size 96 --batch-size 4 --iters 3000 --eval-every 250 --no-pretrained --seg-encoder resnet18 --seed $S "$@" \
  --out $OUT $R >> runs/s96/$NAME-s$S.log 2>&1
echo "$NAME-s$S rc=$? $(date -u +%H:%M)" >> runs/s96/done.txt
