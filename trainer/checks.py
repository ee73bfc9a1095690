"""Start-up checks of a run config: each failure names the field and what was expected.

RANGES holds every numeric field's valid values, in one place; the checks after it are
those between fields and of names. The evaluations' own fields are checked by
evaluators.check.
"""

import dataclasses
import math
from typing import Optional

import masking
from masking import text as text_reduction
from models import text
from models import transformer
from trainer import optimizer
from trainer import partitioning


@dataclasses.dataclass(frozen=True)
class Range:
  """Valid values of a numeric field: finite, within [low, high] (or open at either end)."""
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False
  why: str = ''  # said after the expectation

  def holds(self, value) -> bool:
    if isinstance(value, bool) or not math.isfinite(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def __str__(self):
    if self.low is not None and self.high is not None:
      text = (f'a value in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}'
              f'{")" if self.high_open else "]"}')
    elif self.low is not None:
      text = f'a finite value {">" if self.low_open else ">="} {self.low:g}'
    else:
      text = 'a finite value'
    return text + (f' ({self.why})' if self.why else '')


def _at_least(low, why=''):
  return Range(low, why=why)


def _positive(why=''):
  return Range(0, low_open=True, why=why)


_PROBABILITY = Range(0, 1, high_open=True)
_FRACTION = Range(0, 1)
# Seeds go to JAX, TensorFlow and NumPy, whose seeds are 32-bit at the narrowest.
_SEED = Range(0, 2**31 - 1)
_OFF_AT_0 = 'or 0: off'

RANGES = {
    'batch_size': _at_least(2, 'the contrastive loss needs 2 examples: 1 scores 0 at every '
                            'step'),
    'eval_batch_size': _at_least(1),
    'eval_max_images': _at_least(0, '0: every image'),
    'image_size': _at_least(1),
    'samples_per_epoch': _at_least(1),
    'shuffle_buffer': _at_least(0, "0: 16 x the host's batch"),
    'num_parallel_reads': _at_least(1),
    'unreadable_records_limit': _at_least(1, 'records tried at start-up'),
    'learning_rate': _at_least(0),
    'abs_learning_rate': _at_least(0, '0: unset'),
    'warmup_epochs': _at_least(0),
    'warmup_steps': _at_least(0, '0: unset'),
    'num_epochs': _at_least(0),
    'min_abs_lr': _at_least(0),
    'warmup_abs_lr': _at_least(0),
    'total_steps': _at_least(0, '0: num_epochs decides'),
    'opt.b1': Range(0, 1, high_open=True),
    'opt.b2': Range(0, 1, high_open=True),
    'opt.eps': _at_least(0),
    'opt.weight_decay': _at_least(0),
    'opt.clip_grad_norm': _at_least(0, _OFF_AT_0),
    'aug.eval_pad': _at_least(0),
    'aug.txt.max_len': _at_least(3, 'a token of text besides [CLS] and [SEP] or the start '
                                 'and end of text'),
    'seed_jax': _SEED,
    'seed_tf': _SEED,
    'seed_pt': _SEED,
    'log_every_steps': _at_least(0, _OFF_AT_0),
    'eval_every_steps': _at_least(0, '0: only at the end'),
    'save_every_epochs': _at_least(0, '0: only at the end'),
    'checkpoint_every_steps': _at_least(0, '0: save_every_epochs decides'),
    'vis_every_epochs': _at_least(0, '0: only at the end'),
    'keep_checkpoints': _at_least(0, '0 keeps every checkpoint'),
    'resume_step': _at_least(0, '0: the newest'),
    'partitioning.num_partitions': _at_least(1),
    'grad_accum_steps': _at_least(1),
    'model.clr.tau': _positive(),
    'model.clr.tau_init': _positive(),
    'model.clr.max_logit_scale': _at_least(1, 'logit_scale is held in [0, log of it]'),
    'model.clr.proj_dim_out': _at_least(1),
    'model.clr.loss_chunk': _at_least(0, _OFF_AT_0),
    'model.model_txt.masking.num_tokens': _at_least(2, 'a word and a start or end token'),
    'model.model_txt.masking.frequency_threshold': _positive("CLIPF's t"),
    'model.model_txt.masking.frequency_captions': _at_least(1),
    'model.model_txt.masking.frequency_min_count': _at_least(1),
    'model.sigmoid.scale_init': _positive('a logit scale, SigLIP\'s 10'),
    'model.sigmoid.bias_init': Range(why="a logit bias, SigLIP's -10"),
    'model.aclip.distill_weight': _at_least(0, _OFF_AT_0),
    'model.aclip.simclr_weight': _at_least(0, _OFF_AT_0),
    'model.aclip.simclr_temperature': _positive(),
    'model.aclip.head_dim': _at_least(1),
    'model.norm_eps': _positive(),
    'model.model_img.mask_ratio': Range(0, 1, high_open=True),
    'model.model_img.hidden_size': _at_least(1),
    'model.model_img.masking.num_views': _at_least(1),
    'model.model_img.masking.sigma': _positive('a variance'),
    'model.model_img.masking.anchor_ratio': _FRACTION,
    'model.model_img.masking.threshold': Range(-1, 1, why='a correlation'),
    'model.model_img.masking.target_mask_ratio': _PROBABILITY,
    'model.model_img.masking.min_mask_ratio': _PROBABILITY,
    'model.model_img.masking.block': _at_least(1),
    'model.model_img.masking.temperature': _at_least(0, '0: hard top-k'),
    'model.model_img.masking.ema_momentum': _FRACTION,
    'model.model_txt.mask_ratio': Range(0, 0, why="text tokens are never masked, as FLIP's "
                                        'model refuses too'),
    'model.model_txt.hidden_size': _at_least(1),
    'model.model_txt.vocab_size': _at_least(1),
}
for _tower in ('model_img', 'model_txt'):
  RANGES.update({
      f'model.{_tower}.transformer.mlp_dim': _at_least(1),
      f'model.{_tower}.transformer.num_heads': _at_least(1),
      f'model.{_tower}.transformer.num_layers': _at_least(1),
      f'model.{_tower}.transformer.dropout_rate': _PROBABILITY,
      f'model.{_tower}.transformer.attention_dropout_rate': _PROBABILITY,
      f'model.{_tower}.transformer.droppath_rate': _PROBABILITY,
  })
# Fields of several numbers: each must hold.
SEQUENCE_RANGES = {
    'aug.area_range': Range(0, 1, low_open=True),
    'aug.aspect_ratio_range': _positive(),
    'aug.pixel_mean': Range(),
    'aug.pixel_std': _positive(),
    'model.model_img.patches.size': _at_least(1),
}


def _field(config, name):
  for part in name.split('.'):
    config = config[part]
  return config


def check_ranges(config):
  """Every field of RANGES and SEQUENCE_RANGES within its range."""
  for name, valid in RANGES.items():
    value = _field(config, name)
    _require(valid.holds(value), f'config.{name}={value!r}: expected {valid}')
  for name, valid in SEQUENCE_RANGES.items():
    values = tuple(_field(config, name))
    _require(all(valid.holds(v) for v in values),
             f'config.{name}={values}: expected each {valid}')


LOSSES = ('softmax', 'sigmoid')


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def check(config):
  # TensorFlow's, imported here: the train step and the benchmarks that compile it
  # (trainer/fit.py) run on accelerator hosts without TensorFlow.
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  from input_pipeline import tokenizer  # pylint: disable=g-import-not-at-top
  check_ranges(config)
  img, txt, clr = config.model.model_img, config.model.model_txt, config.model.clr
  _require(config.total_steps > 0 or config.num_epochs > 0,
           'config.num_epochs must be positive when config.total_steps is 0')
  for field in ('pixel_mean', 'pixel_std'):
    values = tuple(config.aug[field])
    _require(len(values) == 3, f'config.aug.{field}={values}: expected 3 values (R, G, B) on '
             'the 0-1 scale')
  for field in ('area_range', 'aspect_ratio_range'):
    low, high = config.aug[field]
    _require(low <= high, f'config.aug.{field}={(low, high)}: expected low <= high')
  masking.grid_of(config)  # image_size must be a multiple of the patch size
  masking.get_policy(config, train=True)  # known policy, feasible mask_ratio
  for tower, cfg in (('model_img', img), ('model_txt', txt)):
    heads, width = cfg.transformer.num_heads, cfg.hidden_size
    _require(width % heads == 0, f'config.model.{tower}.hidden_size={width} does not divide '
             f'into config.model.{tower}.transformer.num_heads={heads}')
    _require(cfg.transformer.remat_policy in transformer.REMAT_POLICIES,
             f'config.model.{tower}.transformer.remat_policy='
             f'{cfg.transformer.remat_policy!r}: expected one of '
             f'{sorted(transformer.REMAT_POLICIES)}')
  _require(not (img.cls_position and img.sincos),
           'config.model.model_img.cls_position=True needs a learned position table: set '
           'config.model.model_img.sincos=False')
  _require(not img.sincos or img.hidden_size % 4 == 0,
           f'config.model.model_img.hidden_size={img.hidden_size}: the sin-cos position '
           'embedding needs a multiple of 4')
  _require(config.model.activation in transformer.ACTIVATIONS,
           f'config.model.activation={config.model.activation!r}: expected one of '
           f'{sorted(transformer.ACTIVATIONS)}')
  _require(config.model.attention in transformer.ATTENTION,
           f'config.model.attention={config.model.attention!r}: expected one of '
           f'{transformer.ATTENTION}')
  ids = tokenizer.from_config(config).vocab_size  # a known tokenizer
  _require(txt.vocab_size >= ids,
           f'config.model.model_txt.vocab_size={txt.vocab_size}: the '
           f'{config.aug.txt.tokenizer} tokenizer gives ids up to {ids - 1}; expected {ids} or '
           'more')
  text_pools = ('',) + text.POOLINGS
  _require(txt.pool in text_pools,
           f'config.model.model_txt.pool={txt.pool!r}: expected one of {text_pools}')
  _require(not txt.sincos, 'config.model.model_txt.sincos=True: the text tower\'s position '
           'embedding is learned (FLIP\'s model refuses sin-cos too); set False')
  views = img.masking.num_views
  _require(config.model.aclip.simclr_weight == 0 or views >= 2,
           f'config.model.aclip.simclr_weight={config.model.aclip.simclr_weight} contrasts two '
           f'views: set config.model.model_img.masking.num_views >= 2 (it is {views})')
  _require(img.masking.view_crops in ('shared', 'separate'),
           f'config.model.model_img.masking.view_crops={img.masking.view_crops!r}: expected '
           "'shared' or 'separate'")
  _require(img.masking.view_crops == 'shared' or views >= 2,
           "config.model.model_img.masking.view_crops='separate' crops each view apart: set "
           f'config.model.model_img.masking.num_views >= 2 (it is {views})')
  _require(config.batch_size % config.grad_accum_steps == 0,
           f'config.grad_accum_steps={config.grad_accum_steps} must divide '
           f'config.batch_size={config.batch_size}')
  chunk = clr.loss_chunk
  _require(chunk == 0 or config.batch_size % chunk == 0,
           f'config.model.clr.loss_chunk={chunk} must be 0 (off) or divide '
           f'config.batch_size={config.batch_size}')
  text_masking = txt.masking
  _require(text_masking.policy in text_reduction.POLICIES,
           f'config.model.model_txt.masking.policy={text_masking.policy!r}: expected one of '
           f'{text_reduction.POLICIES}')
  if text_masking.policy != 'none':
    tokens = text_masking.num_tokens
    special = tokenizer.from_config(config)
    marks = (special.start_id is not None) + (special.end_id is not None)
    _require(marks < tokens <= config.aug.txt.max_len,
             f'config.model.model_txt.masking.num_tokens={tokens}: expected more than the '
             f'{marks} start and end tokens and at most config.aug.txt.max_len='
             f'{config.aug.txt.max_len}')
  _require(config.model.loss in LOSSES,
           f'config.model.loss={config.model.loss!r}: expected one of {LOSSES}')
  _require(config.model.loss == 'softmax' or chunk == 0,
           f'config.model.clr.loss_chunk={chunk} chunks the softmax loss; the sigmoid loss is '
           'formed block by block over the devices already: set 0')
  partitioning.logical_rules(config)  # a known strategy
  _require(config.aug.crop_ver in augment.CROP_VERSIONS,
           f'config.aug.crop_ver={config.aug.crop_ver!r}: expected one of '
           f'{augment.CROP_VERSIONS}')
  _require(config.opt_mu_dtype in optimizer.MU_DTYPES,
           f'config.opt_mu_dtype={config.opt_mu_dtype!r}: expected one of '
           f'{sorted(optimizer.MU_DTYPES)}')
  _require(config.opt.mu_dtype in ('', *optimizer.MU_DTYPES),
           f'config.opt.mu_dtype={config.opt.mu_dtype!r}: expected empty or one of '
           f'{sorted(optimizer.MU_DTYPES)}')
  _require(config.decay_set in optimizer.DECAY_SETS,
           f'config.decay_set={config.decay_set!r}: expected one of '
           f'{sorted(optimizer.DECAY_SETS)}')
  optimizer.steps_per_epoch(config)  # at least one whole step per epoch
  _require(clr.logit_scale_clamp in ('forward', 'after_update'),
           f'config.model.clr.logit_scale_clamp={clr.logit_scale_clamp!r}: '
           "expected 'forward' or 'after_update'")
  _require(clr.clr_loss, 'config.model.clr.clr_loss=False: the contrastive loss is the only '
           'objective (as in FLIP); set it to True')
