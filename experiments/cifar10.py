"""Adversarial training on CIFAR-10 (Wang et al., ICML 2019, Section 5).

Trains with ``--method`` (unsecured, standard, curriculum or dynamic) and
``--model`` (cifar10_cnn, the paper's 8-layer CNN, or wrn, WRN-34-10),
checkpointing into ``--workdir`` and resuming from it when rerun, then writes
figures and evaluates the final model under the paper's attacks::

  python -m experiments.cifar10 \\
      --flagfile=experiments/configs/cifar10_dynamic.flags \\
      --workdir=runs/cifar10_dynamic --data_dir=/path/to/cifar10

Flags: ``--help`` (defined in :mod:`experiments.config`); CIFAR-10's defaults
are ``config.DATASET_DEFAULTS['cifar10']``.
"""

from absl import flags

from experiments import common
from experiments import config as config_lib

# List the shared flags under --help, not only under --helpfull.
flags.adopt_module_key_flags(config_lib)


def main() -> None:
  common.app_main('cifar10')


if __name__ == '__main__':
  main()
