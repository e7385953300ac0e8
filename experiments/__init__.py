"""Experiment entry points of dynamic_at: flags, configs and training loops.

* ``python -m experiments.mnist
  --flagfile=experiments/configs/mnist_dynamic.flags --workdir=...``: train
  (and resume), then evaluate, on MNIST.
* ``python -m experiments.cifar10 ...``: the same on CIFAR-10.
* ``python -m experiments.evaluate --workdir=...``: evaluate a trained run.

Flags live here only; the library (:mod:`dynamic_at`) takes explicit
arguments.
"""
