#!/bin/bash
# usage: bash run.sh SUB NAME SEED [train.py options]: the held-out-sized subset SUB, 40 labels, 64 px, 2,000 steps, defaults
cd "$(dirname "$0")/../.."
SUB=$1; NAME=$2; S=$3; shift 3
OUT=runs/h163/$SUB-$NAME-s$S
R=""; [ -f $OUT/checkpoint.pt ] && R="--resume"
OMP_NUM_THREADS=1 python train.py --data-root runs/h163/$SUB/Dataset_BUSI_with_GT --dataset busi --labels 40 --image-size 64 \
  --batch-size 4 --iters 2000 --eval-every 250 --no-pretrained --seg-encoder resnet18 --seed $S "$@" --out $OUT $R \
  >> runs/h163/$SUB-$NAME-s$S.log 2>&1
echo "$SUB-$NAME-s$S rc=$? $(date -u +%H:%M)" >> runs/h163/done.txt
