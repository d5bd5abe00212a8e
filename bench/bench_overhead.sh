#!/usr/bin/env bash
# The experiment layer's overhead on one run: the same 100k-step NPG CartPole run (seed 0, an evaluation of 10
# episodes every 5k steps) through `train.py train` and through `train.py benchmark`, in turn, ROUNDS times.
# Wall seconds of each whole command go to stdout (README "Many seeds, beside the peers").
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
for round in $(seq 1 "${ROUNDS:-2}"); do
  start=$(date +%s.%N)
  OMP_NUM_THREADS=1 python train.py train --algo npg --env CartPole-v1 --seed 0 --n-timesteps 100000 \
    --eval-freq 5000 --n-eval-episodes 10 --log-folder "$out/train$round" --quiet > "$out/train$round.log" 2>&1
  echo "train round $round $(python -c "import time; print(round(time.time() - $start, 1))") s"
  start=$(date +%s.%N)
  OMP_NUM_THREADS=1 python train.py benchmark --algos npg --envs CartPole-v1 --seeds 0 --n-timesteps 100000 \
    --eval-freq 5000 --n-eval-episodes 10 --out "$out/bench$round" --workers 1 > "$out/bench$round.log" 2>&1
  echo "benchmark round $round $(python -c "import time; print(round(time.time() - $start, 1))") s"
done
rm -rf "$out"
