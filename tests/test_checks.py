"""The start-up checks' table of ranges, field by field: every numeric field of
configs/default.py has one, its default passes, and a value just outside it is refused with
the field named, before anything is built."""

import math

import pytest

from configs import default
from trainer import checks
from trainer import saved_config
from tests.conftest import micro_config


def _numeric_fields():
  flat = saved_config.flat(saved_config.as_json(default.get_config()))
  return {name for name, value in flat.items()
          if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _outside(valid: checks.Range, default_value):
  """Values of the field's type just outside `valid`."""
  integer = isinstance(default_value, int)
  step = 1 if integer else 0.5
  values = []
  if valid.low is not None:
    values.append(valid.low if valid.low_open else valid.low - step)
  if valid.high is not None:
    values.append(valid.high if valid.high_open else valid.high + step)
  if not integer:
    values += [math.nan, math.inf]
  return [int(v) if integer else float(v) for v in values]


def test_every_numeric_field_has_a_range():
  listed = set(checks.RANGES) | set(checks.SEQUENCE_RANGES)
  assert _numeric_fields() <= listed, sorted(_numeric_fields() - listed)


def test_every_recipe_default_passes(demo_dir):
  checks.check(micro_config(demo_dir))


@pytest.mark.parametrize('field', sorted(checks.RANGES))
def test_a_value_outside_its_range_is_refused_naming_the_field(demo_dir, field):
  config = micro_config(demo_dir)
  valid = checks.RANGES[field]
  current = checks._field(config, field)  # pylint: disable=protected-access
  assert valid.holds(current), (field, current)
  for value in _outside(valid, current):
    with pytest.raises(ValueError, match=f'^config.{field}={value!r}: expected'):
      checks.check(micro_config(demo_dir, **{field: value}))


@pytest.mark.parametrize('field,value', [
    ('aug.aspect_ratio_range', (0.0, 1.0)), ('aug.area_range', (0.8, 0.5)),
    ('aug.pixel_std', (0.2, 0.0, 0.2)), ('aug.pixel_mean', (0.5, math.nan, 0.5)),
    ('model.model_img.patches.size', (0, 0))])
def test_fields_of_several_numbers_are_checked_each(demo_dir, field, value):
  with pytest.raises(ValueError, match=f'^config.{field}='):
    checks.check(micro_config(demo_dir, **{field: value}))


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_at_start_up(demo_dir):
  with pytest.raises(ValueError, match='vocab_size=1000: the tf_bert tokenizer gives ids up '
                                       'to 30522'):
    checks.check(micro_config(demo_dir, **{'model.model_txt.vocab_size': 1000}))
