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
      len(fields) - 1) == 49
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
_ADDED_SINCE = dict(attack_cascade=False, cpu_devices=0, model_kwargs='',
                    beta=6.0,
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


# ---------------------------------------------------------------------------
# Every committed flags.json loads to the same settings and the same model
# ---------------------------------------------------------------------------

RESULT_FLAGS = sorted((REPO / 'results').rglob('flags.json'))

# The model build_model made of a config before models were a name plus
# keyword arguments (training.build_model, reporting.export_weights):
# WideResNet(depth=wrn_depth, width=wrn_width), else the model's defaults.
def _old_model_kwargs(config):
  if config.model == 'wrn':
    return {'depth': config.wrn_depth, 'width': config.wrn_width}
  return {}


def test_committed_flags_json_files_are_found():
  assert len(RESULT_FLAGS) >= 32


@pytest.mark.parametrize('path', RESULT_FLAGS,
                         ids=lambda p: str(p.relative_to(REPO / 'results')))
def test_committed_flags_json_loads_to_the_same_settings(path):
  from dynamic_at import models  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    saved = json.load(f)
  assert 'model_kwargs' not in saved  # written before the setting existed
  config = config_lib.Config.from_dict(saved)
  config_lib.validate_config(config)
  assert config_lib.flag_differences(saved, config) == []
  # Every saved value reads back unchanged; the new setting is its default.
  new = {k: v for k, v in config.to_dict().items() if k not in saved}
  assert new.get('model_kwargs') == '' and set(new) <= {
      'model_kwargs', 'attack_cascade', 'cpu_devices',
      'unclipped_random_start', *_ADDED_SINCE}
  assert {k: v for k, v in config.to_dict().items() if k in saved} == saved
  model = training.build_model(config)
  assert model == models.get_model(config.model, **_old_model_kwargs(config))
  assert type(model) is models.MODELS[config.model].constructor
  assert config_lib.model_kwargs_of(config) == {
      'mnist_cnn': {'num_classes': 10},
      'cifar10_cnn': {'num_classes': 10, 'normalize': True}}[config.model]


# ---------------------------------------------------------------------------
# --model_kwargs and the per-model flags
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('text,expected', [
    ('', {}),
    ('  ', {}),
    ('depth=28', {'depth': 28}),
    ('depth=28, width=2,normalize=false',
     {'depth': 28, 'width': 2, 'normalize': False}),
    ('{"depth": 16, "normalize": true}', {'depth': 16, 'normalize': True}),
    ('name=abc,x=0.5', {'name': 'abc', 'x': 0.5}),
])
def test_parse_model_kwargs(text, expected):
  got = config_lib.parse_model_kwargs(text)
  assert got == expected
  assert [type(v) for v in got.values()] == [type(v)
                                             for v in expected.values()]


@pytest.mark.parametrize('text,message', [
    ('depth', "^--model_kwargs=depth: expected k=v,k=v .*cannot read 'depth'"),
    ('depth=1,depth=2', "^--model_kwargs=depth=1,depth=2: .*repeated"),
    ('=3', "^--model_kwargs==3: expected k=v"),
    ('{bad', r"^--model_kwargs=\{bad: not a JSON object"),
    ('{"a": [1', r"^--model_kwargs=\{\"a\": \[1: not a JSON object"),
])
def test_parse_model_kwargs_errors_name_the_flag(text, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse_model_kwargs(text)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config_lib.Config(
        dataset='mnist', workdir='/w', model_kwargs=text))


def _wrn(**changes):
  return config_lib.Config(dataset='cifar10', workdir='/w', model='wrn',
                           eps=8 / 255).replace(**changes)


def test_model_kwargs_of_merges_defaults_flags_and_model_kwargs():
  wrn = {'depth': 34, 'width': 10, 'num_classes': 10, 'normalize': True}
  assert config_lib.model_kwargs_of(_wrn()) == wrn
  assert config_lib.model_kwargs_of(_wrn(wrn_depth=16, wrn_width=2)) == dict(
      wrn, depth=16, width=2)
  assert config_lib.model_kwargs_of(_wrn(model_kwargs='depth=28')) == dict(
      wrn, depth=28)
  # The same value in both places is fine; a different one is refused.
  assert config_lib.model_kwargs_of(
      _wrn(model_kwargs='depth=16', wrn_depth=16))['depth'] == 16
  with pytest.raises(config_lib.ConfigError, match=(
      r'^--wrn_depth=16 contradicts --model_kwargs=depth=28 \(depth=28\)')):
    config_lib.model_kwargs_of(_wrn(model_kwargs='depth=28', wrn_depth=16))
  # The per-model flags mean nothing to other models.
  cnn = config_lib.Config(dataset='cifar10', workdir='/w', wrn_depth=15,
                          model='cifar10_cnn')
  assert config_lib.model_kwargs_of(cnn) == {'num_classes': 10,
                                              'normalize': True}
  assert config_lib.model_kwargs_of(cnn.replace(
      model='preact_resnet18', model_kwargs='normalize=false')) == {
          'num_classes': 10, 'normalize': False}
  assert training_build(cnn.replace(model='preact_resnet18')).normalize


def training_build(config):
  from experiments import training  # pylint: disable=g-import-not-at-top
  return training.build_model(config)


@pytest.mark.parametrize('changes,message', [
    (dict(wrn_depth=15), '--wrn_depth=15: (depth - 4) must be divisible by 6 '
     'and depth >= 10 (e.g. 16, 28, 34).'),
    (dict(wrn_width=0), '--wrn_width=0: the width k must be >= 1.'),
    (dict(model_kwargs='depth=15'), '--model_kwargs=depth=15 (--model=wrn): '
     'depth=15: (depth - 4) must be divisible by 6 and depth >= 10 (e.g. 16, '
     '28, 34).'),
    (dict(model_kwargs='dpth=3'), "--model_kwargs=dpth=3 (--model=wrn): model "
     "'wrn' takes no argument 'dpth'; its arguments: depth, width, "
     "num_classes, normalize."),
    (dict(model_kwargs='depth=1.5'), "--model_kwargs=depth=1.5 (--model=wrn): "
     "model 'wrn': depth=1.5 must be a int (default 34)."),
    (dict(model_kwargs='normalize=1'), "--model_kwargs=normalize=1 (--model="
     "wrn): model 'wrn': normalize=1 must be a bool (default True)."),
    (dict(model='vgg'), "--model=vgg does not fit cifar10; use one of "
     "('cifar10_cnn', 'wrn', 'preact_resnet18')."),
])
def test_model_argument_errors_name_the_flag(changes, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate_config(_wrn(**changes))
  assert str(e.value) == message


def test_model_kwargs_flag_is_saved_canonical(tmp_path):
  fv = copy.deepcopy(flags.FLAGS)
  fv.unparse_flags()
  config_lib.set_dataset_defaults('cifar10', fv)
  fv(['main', f'--workdir={tmp_path}', '--model=wrn',
      '--model_kwargs=width=2, depth=16'])
  config = config_lib.config_from_flags('cifar10', fv)
  assert config.model_kwargs == '{"depth": 16, "width": 2}'
  assert config_lib.model_kwargs_of(config)['depth'] == 16
  # A spelling that does not parse is kept, for validate_config to name.
  fv2 = copy.deepcopy(flags.FLAGS)
  fv2.unparse_flags()
  fv2(['main', f'--workdir={tmp_path}', '--model_kwargs=depth'])
  assert config_lib.config_from_flags('cifar10', fv2).model_kwargs == 'depth'
