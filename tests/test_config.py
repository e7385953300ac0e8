"""Tests of experiments/config.py: one declaration per setting, and the
flags.json files of older runs."""

import copy
import dataclasses
import json
from pathlib import Path

from absl import flags
import pytest

from experiments import config as config_lib
from experiments import sweep
from tests import run_utils

REPO = run_utils.REPO
TESTDATA = Path(__file__).resolve().parent / 'testdata'

# The paper's per-dataset defaults as config.py spelled them out by hand
# before they were generated from the Config fields (issue #16).
PAPER_DATASET_DEFAULTS = {
    'mnist': dict(model='mnist_cnn', eps=0.3, num_epochs=50,
                  lr_drop_epochs=['20', '40'], weight_decay=1e-4, t_prime=40.0,
                  curriculum_max_steps=40, augment='none'),
    'cifar10': dict(model='cifar10_cnn', eps=8 / 255, num_epochs=120,
                    lr_drop_epochs=['60', '100'], weight_decay=1e-4,
                    t_prime=100.0, curriculum_max_steps=7, augment='crop_flip'),
}

# The flags a resumed run may change, as listed by hand before.
RESUMABLE = (
    'workdir', 'data_dir', 'num_epochs', 'num_eval_examples',
    'eval_batch_size', 'eval_every', 'eval_every_examples', 'attacks',
    'attack_cascade', 'log_every_steps', 'checkpoint_every_steps',
    'keep_checkpoints', 'stop_after_steps', 'source_workdir', 'cpu_devices',
    'multihost', 'coordinator_address', 'num_processes', 'process_id',
)

FLAG_CLASSES = {'string': 'ArgumentParser', 'enum': 'EnumParser',
                'integer': 'IntegerParser', 'float': 'FloatParser',
                'bool': 'BooleanParser', 'int_list': 'ListParser'}


def _module_flags():
  return {h.name: h for h in
          flags.FLAGS.get_flags_for_module('experiments.config')}


def test_every_config_field_is_exactly_one_flag_and_vice_versa():
  fields = {f.name: f for f in dataclasses.fields(config_lib.Config)}
  holders = _module_flags()
  # dataset is the main's; every other field is a flag of the same name.
  assert set(fields) - set(holders) == {'dataset'}
  assert set(holders) <= set(fields)
  assert len(flags.FLAGS.get_flags_for_module('experiments.config')) == (
      len(fields) - 1) == 48
  for name, holder in holders.items():
    field = fields[name]
    kind = config_lib.flag_kind(field)
    assert type(holder.parser).__name__ == FLAG_CLASSES[kind], name
    spec = field.metadata[config_lib.FLAG_METADATA_KEY]
    # (An enum's help starts with its values, '<a|b>: '.)
    assert holder.help.endswith(spec.help) and spec.help
    if name == 'workdir':  # required: the flag has no default
      assert field.default is dataclasses.MISSING and holder.default is None
      continue
    # The flag's default parses to the field's default.
    value = holder.default
    if kind == 'int_list':
      assert all(isinstance(v, str) for v in value)
      value = tuple(int(v) for v in value)
    assert value == field.default and type(value) is type(field.default), name
    if kind == 'enum':
      assert tuple(holder.parser.enum_values) == spec.choices
  # A sample of flag kinds and defaults, spelled out.
  assert (holders['eps'].default, holders['step_size'].default) == (0.3, None)
  assert holders['lr_drop_epochs'].default == ['20', '40']
  assert holders['method'].parser.enum_values == [
      'unsecured', 'standard', 'curriculum', 'dynamic', 'fat', 'trades',
      'mart']
  assert holders['loss_weighting'].flag_type() == 'bool'
  assert holders['num_processes'].flag_type() == 'int'


def test_generated_dataset_defaults_and_resumable_flags():
  assert config_lib.DATASET_DEFAULTS == PAPER_DATASET_DEFAULTS
  assert config_lib.MAY_DIFFER_ON_RESUME == RESUMABLE


def test_field_checks_keep_their_messages():
  c = config_lib.Config(dataset='mnist', workdir='/w')
  config_lib.validate_config(c)
  cases = {
      'eps': (0.0, '--eps=0.0 is outside (0, 1]: eps is an L-inf radius in '
              'pixel units (pixels in [0, 1]), e.g. 0.3 for MNIST or 8/255 = '
              '0.0313725 for CIFAR-10.'),
      'step_size': (0.0, '--step_size=0.0 must be positive.'),
      'num_epochs': (0, '--num_epochs=0 must be >= 1.'),
      'c_max': (-0.5, '--c_max=-0.5 must be >= 0.'),
      'curriculum_threshold': (
          1.5, '--curriculum_threshold=1.5 must be a fraction in [0, 1].'),
      'momentum': (1.0, '--momentum=1.0 must be in [0, 1).'),
      'lr_drop_epochs': ((3, -1), '--lr_drop_epochs=(3, -1) must be >= 0.'),
      'num_train_examples': (
          -1, '--num_train_examples=-1 must be >= 0 (0 = all).'),
      'method': ('bogus', "--method=bogus: expected one of ('unsecured', "
                 "'standard', 'curriculum', 'dynamic', 'fat', 'trades', "
                 "'mart')."),
      'attacks': ('x', "--attacks=x: expected one of ('paper', 'strong', "
                  "'autoattack')."),
      # model: checked against the dataset's models, not all models.
      'model': ('wrn', "--model=wrn does not fit mnist; use one of "
                "('mnist_cnn',)."),
  }
  for name, (value, message) in cases.items():
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate_config(c.replace(**{name: value}))
    assert str(e.value) == message
  # Across fields.
  with pytest.raises(config_lib.ConfigError, match=(
      '^--curriculum_max_steps=2 must be >= --curriculum_start_steps=3.$')):
    config_lib.validate_config(c.replace(curriculum_start_steps=3,
                                         curriculum_max_steps=2))


# A new setting is one declaration: a field with its flag metadata.
@dataclasses.dataclass(frozen=True)
class _ConfigWithKnob(config_lib.Config):
  knob: int = config_lib.setting(
      3, 'A new setting.', check=config_lib.at_least(1),
      per_dataset={'cifar10': 7}, may_differ_on_resume=True)
  knob_mode: str = config_lib.setting('a', 'Its mode.', choices=('a', 'b'))
  knob_epochs: tuple[int, ...] = config_lib.setting(
      (1, 2), 'Epochs.', per_dataset={'mnist': (5,)})


def test_a_new_setting_is_one_declaration():
  fv = flags.FlagValues()
  config_lib.define_flags(_ConfigWithKnob, fv)
  assert (fv['knob'].default, fv['knob'].help) == (3, 'A new setting.')
  assert fv['knob_mode'].parser.enum_values == ['a', 'b']
  assert fv['knob_epochs'].default == ['1', '2']
  assert set(fv) == {f.name for f in dataclasses.fields(_ConfigWithKnob)
                     } - {'dataset'}

  def parse(dataset, *args):
    values = copy.deepcopy(fv)
    config_lib.set_dataset_defaults(dataset, values, _ConfigWithKnob)
    values(['main', '--workdir=/w', *args])
    return config_lib.config_from_flags(dataset, values, _ConfigWithKnob)

  mnist = parse('mnist')
  assert (type(mnist), mnist.knob, mnist.knob_mode) == (
      _ConfigWithKnob, 3, 'a')
  assert mnist.knob_epochs == (5,) and mnist.eps == 0.3
  cifar = parse('cifar10', '--knob=9', '--knob_mode=b')
  assert (cifar.knob, cifar.knob_mode, cifar.knob_epochs) == (9, 'b', (1, 2))
  assert parse('cifar10').knob == 7
  assert parse('mnist', '--knob_epochs=4,6').knob_epochs == (4, 6)
  with pytest.raises(flags.IllegalFlagValueError):
    parse('mnist', '--knob_mode=c')
  assert config_lib.dataset_defaults(_ConfigWithKnob)['cifar10']['knob'] == 7
  # Checked by validate_config, kept on resume as declared, saved and read.
  config_lib.validate_config(mnist)
  with pytest.raises(config_lib.ConfigError, match='^--knob=0 must be >= 1.$'):
    config_lib.validate_config(mnist.replace(knob=0))
  with pytest.raises(config_lib.ConfigError,
                     match="^--knob_mode=c: expected one of"):
    config_lib.validate_config(mnist.replace(knob_mode='c'))
  assert config_lib.resumable_flags(_ConfigWithKnob) == RESUMABLE + ('knob',)
  saved = mnist.to_dict()
  assert config_lib.flag_differences(saved, mnist.replace(knob=5)) == []
  assert config_lib.flag_differences(saved, mnist.replace(
      knob_mode='b')) == [('knob_mode', 'a', 'b')]
  assert _ConfigWithKnob.from_dict(json.loads(json.dumps(saved))) == mnist
  # An older flags.json without the new setting reads its default.
  del saved['knob']
  assert _ConfigWithKnob.from_dict(saved).knob == 3


# ---------------------------------------------------------------------------
# flags.json of runs started before the declarations (copies of real files of
# workdirs/mnist_dynamic_study_cpu/, with the paths made relative)
# ---------------------------------------------------------------------------


# Settings added after those runs, read at their defaults.
_ADDED_SINCE = dict(attack_cascade=False, cpu_devices=0, beta=6.0,
                    fat_tau_epochs=[], fat_step_noise=0.0,
                    attack_start='method')


def _old(run):
  with open(TESTDATA / f'old_flags_{run}.json') as f:
    return json.load(f)


def test_old_flags_json_loads_and_validates():
  saved = _old('dynamic_authors_seed0')
  config = config_lib.Config.from_dict(saved)
  config_lib.validate_config(config)
  # attack_cascade and cpu_devices came later: they read their defaults.
  assert config.to_dict() == dict(saved, **_ADDED_SINCE)
  assert config == config_lib.Config(
      dataset='mnist', workdir='workdirs/mnist_dynamic_study_cpu/'
      'dynamic_authors_seed0', data_dir='../shared/data/mnist',
      method='dynamic', model='mnist_cnn', num_epochs=5, eps=0.3,
      step_size=0.075, num_steps=10, c_max=0.5, t_prime=4.0,
      learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
      lr_drop_epochs=(2, 4), keras_decay=1e-3, loss_weighting=True,
      fosc_centre_random_start=True, unclipped_random_start=True,
      augment='none', eval_batch_size=250, eval_every=1,
      checkpoint_every_steps=100)
  assert config_lib.flag_differences(saved, config) == []


def test_older_flags_json_without_a_newer_flag():
  saved = _old('dynamic_paper_seed0')
  assert 'unclipped_random_start' not in saved
  config = config_lib.Config.from_dict(saved)
  config_lib.validate_config(config)
  assert config.unclipped_random_start is False
  assert config.to_dict() == dict(saved, unclipped_random_start=False,
                                  **_ADDED_SINCE)
  assert (config.method, config.t_prime, config.num_epochs) == (
      'dynamic', 4.0, 5)
  assert config_lib.flag_differences(saved, config) == []


@pytest.mark.parametrize('run', ['dynamic_authors_seed0',
                                 'dynamic_paper_seed0'])
def test_old_runs_resume_under_their_grid(run, monkeypatch):
  """The grid's command line today gives the saved config (up to the paths
  and the flags that may differ): the run would resume, not be refused."""
  monkeypatch.chdir(REPO)
  saved = _old(run)
  grid = sweep.load_grid('experiments/grids/mnist_dynamic_study_cpu.json')
  variant, seed = run.rsplit('_seed', 1)
  (spec,) = [s for s in grid.runs()
             if s.variant.name == variant and s.seed == int(seed)]
  config = sweep.check_run(grid, spec)
  assert config_lib.flag_differences(saved, config) == []


_COMMITTED_FLAGS = sorted(str(p.relative_to(REPO))
                          for p in (REPO / 'results').rglob('flags.json'))


def test_results_hold_flags_json_files():
  assert len(_COMMITTED_FLAGS) >= 30, _COMMITTED_FLAGS


@pytest.mark.parametrize('path', _COMMITTED_FLAGS)
def test_committed_flags_json_loads_to_its_settings(path):
  """Every flags.json under results/ loads and validates, and gives back each
  setting it holds unchanged (settings added since read their defaults)."""
  with open(REPO / path) as f:
    saved = json.load(f)
  config = config_lib.Config.from_dict(saved)
  config_lib.validate_config(config)
  as_dict = config.to_dict()
  assert {k: as_dict[k] for k in saved} == saved
  assert config_lib.flag_differences(saved, config) == []
