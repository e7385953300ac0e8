"""Adversarial training on MNIST (Wang et al., ICML 2019, Section 5).

Trains with ``--method`` (unsecured, standard, curriculum or dynamic),
checkpointing into ``--workdir`` and resuming from it when rerun, then writes
figures and evaluates the final model under the paper's attacks::

  python -m experiments.mnist \\
      --flagfile=experiments/configs/mnist_dynamic.flags \\
      --workdir=runs/mnist_dynamic --data_dir=../shared/data/mnist

Flags: ``--help`` (defined in :mod:`experiments.config`); MNIST's defaults are
``config.DATASET_DEFAULTS['mnist']``.
"""

from absl import flags

from experiments import common
from experiments import config as config_lib

# List the shared flags under --help, not only under --helpfull.
flags.adopt_module_key_flags(config_lib)


def main() -> None:
  common.app_main('mnist')


if __name__ == '__main__':
  main()
