#!/bin/sh
# bench --vs torch,keras on the five specs, one after the other (repo root; the TF venv holds
# TensorFlow 2.21, Keras 3 and torch 2.13 in one process)
# OUT: the results folder; ROUNDS: rounds per bench. The MNIST specs take 30 steps a round: 10
# inference batches of mnist_two_conv (32 images, 3 ms each) were too short a window on a
# 2-core machine (its cnnkit / PyTorch inference read 0.93 and 1.19 in two such runs).
OUT=${OUT:?set OUT to a results folder}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
PY=${PY:-/work/venvs/tf/bin/python}
for spec in configs/mnist_basic.yaml configs/mnist_two_conv.yaml configs/mnist_lenet.yaml; do
  name=$(basename "$spec" .yaml)
  PYTHONPATH=$PWD $PY -m cnnkit bench "$spec" --threads 2 --vs torch,keras --steps 30 --rounds $ROUNDS \
    --json > "$OUT/bench-$name.json" 2> "$OUT/bench-$name.log"
done
PYTHONPATH=$PWD $PY -m cnnkit bench configs/resnet20.yaml --threads 2 --vs torch,keras --steps 5 \
  --rounds $ROUNDS --batch-size 128 --set data.source=synthetic --set data.num_classes=10 \
  --json > "$OUT/bench-resnet20.json" 2> "$OUT/bench-resnet20.log"
PYTHONPATH=$PWD $PY -m cnnkit bench benchmarks/specs/mobilenet_tiny.yaml --threads 2 --vs torch,keras \
  --steps 10 --rounds $ROUNDS --json > "$OUT/bench-mobilenet_tiny.json" 2> "$OUT/bench-mobilenet_tiny.log"
