"""Start-up checks of a run config: each failure names the field and what was expected.

The evaluations' own fields are checked by evaluators.check.
"""

import math

from input_pipeline import augment
from input_pipeline import tokenizer
import masking
from models import text
from models import transformer
from trainer import optimizer
from trainer import partitioning


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def check(config):
  img = config.model.model_img
  masking.grid_of(config)  # image_size must be a multiple of the patch size
  masking.get_policy(config, train=True)  # known policy, feasible mask_ratio
  _require(config.batch_size > 0, f'config.batch_size={config.batch_size}: must be positive')
  _require(config.eval_batch_size > 0,
           f'config.eval_batch_size={config.eval_batch_size}: must be positive')
  for field in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'total_steps'):
    _require(config[field] >= 0, f'config.{field}={config[field]}: must be >= 0 (0 turns it off)')
  _require(config.keep_checkpoints >= 0,
           f'config.keep_checkpoints={config.keep_checkpoints}: must be >= 0 (0 keeps every '
           'checkpoint)')
  _require(config.total_steps > 0 or config.num_epochs > 0,
           'config.num_epochs must be positive when config.total_steps is 0')
  _require(config.samples_per_epoch > 0,
           f'config.samples_per_epoch={config.samples_per_epoch}: must be positive')
  lo, hi = config.aug.area_range
  _require(0 < lo <= hi <= 1, f'config.aug.area_range={tuple(config.aug.area_range)}: expected '
           '0 < low <= high <= 1')
  _require(config.aug.txt.max_len >= 3,
           f'config.aug.txt.max_len={config.aug.txt.max_len}: must be at least 3')
  for tower, cfg in (('model_img', img), ('model_txt', config.model.model_txt)):
    heads, width = cfg.transformer.num_heads, cfg.hidden_size
    _require(width % heads == 0, f'config.model.{tower}.hidden_size={width} does not divide '
             f'into config.model.{tower}.transformer.num_heads={heads}')
  _require(not (img.cls_position and img.sincos),
           'config.model.model_img.cls_position=True needs a learned position table: set '
           'config.model.model_img.sincos=False')
  _require(config.model.activation in transformer.ACTIVATIONS,
           f'config.model.activation={config.model.activation!r}: expected one of '
           f'{sorted(transformer.ACTIVATIONS)}')
  _require(config.model.attention in transformer.ATTENTION,
           f'config.model.attention={config.model.attention!r}: expected one of '
           f'{transformer.ATTENTION}')
  _require(config.model.norm_eps > 0,
           f'config.model.norm_eps={config.model.norm_eps}: must be positive')
  if config.aug.txt.tokenizer == 'clip_bpe':
    _require(config.model.model_txt.vocab_size >= 49408,
             f'config.model.model_txt.vocab_size={config.model.model_txt.vocab_size}: CLIP BPE '
             'ids go up to 49407; expected 49408')
  text_pools = ('',) + text.POOLINGS
  _require(config.model.model_txt.pool in text_pools,
           f'config.model.model_txt.pool={config.model.model_txt.pool!r}: expected one of '
           f'{text_pools}')
  for field in ('pixel_mean', 'pixel_std'):
    values = tuple(config.aug[field])
    _require(len(values) == 3 and (field == 'pixel_mean' or min(values) > 0),
             f'config.aug.{field}={values}: expected 3 values (R, G, B) on the 0-1 scale'
             + (', all positive' if field == 'pixel_std' else ''))
  _require(not img.sincos or img.hidden_size % 4 == 0,
           f'config.model.model_img.hidden_size={img.hidden_size}: the sin-cos position '
           'embedding needs a multiple of 4')
  views = img.masking.num_views
  _require(views >= 1, f'config.model.model_img.masking.num_views={views}: must be >= 1')
  aclip = config.model.aclip
  for field in ('distill_weight', 'simclr_weight'):
    _require(aclip[field] >= 0, f'config.model.aclip.{field}={aclip[field]}: must be >= 0')
  _require(aclip.simclr_weight == 0 or views >= 2,
           f'config.model.aclip.simclr_weight={aclip.simclr_weight} contrasts two views: set '
           f'config.model.model_img.masking.num_views >= 2 (it is {views})')
  _require(aclip.simclr_temperature > 0,
           f'config.model.aclip.simclr_temperature={aclip.simclr_temperature}: must be > 0')
  _require(0.0 <= img.masking.ema_momentum <= 1.0,
           f'config.model.model_img.masking.ema_momentum={img.masking.ema_momentum}: expected '
           'a value in [0, 1]')
  _require(config.grad_accum_steps >= 1 and config.batch_size % config.grad_accum_steps == 0,
           f'config.grad_accum_steps={config.grad_accum_steps} must be >= 1 and divide '
           f'config.batch_size={config.batch_size}')
  chunk = config.model.clr.loss_chunk
  _require(chunk >= 0 and (chunk == 0 or config.batch_size % chunk == 0),
           f'config.model.clr.loss_chunk={chunk} must be 0 (off) or divide '
           f'config.batch_size={config.batch_size}')
  partitioning.logical_rules(config)  # a known strategy
  tokenizer.from_config(config)  # a known tokenizer
  _require(config.aug.crop_ver in augment.CROP_VERSIONS,
           f'config.aug.crop_ver={config.aug.crop_ver!r}: expected one of '
           f'{augment.CROP_VERSIONS}')
  _require(config.aug.eval_pad >= 0, f'config.aug.eval_pad={config.aug.eval_pad}: must be >= 0')
  _require(config.opt_mu_dtype in optimizer.MU_DTYPES,
           f'config.opt_mu_dtype={config.opt_mu_dtype!r}: expected one of '
           f'{sorted(optimizer.MU_DTYPES)}')
  _require(config.opt.mu_dtype in ('', *optimizer.MU_DTYPES),
           f'config.opt.mu_dtype={config.opt.mu_dtype!r}: expected empty or one of '
           f'{sorted(optimizer.MU_DTYPES)}')
  _require(config.decay_set in optimizer.DECAY_SETS,
           f'config.decay_set={config.decay_set!r}: expected one of '
           f'{sorted(optimizer.DECAY_SETS)}')
  for field in ('abs_learning_rate', 'warmup_steps', 'shuffle_buffer'):
    _require(config[field] >= 0, f'config.{field}={config[field]}: must be >= 0 (0: unset)')
  for field in ('learning_rate', 'abs_learning_rate', 'min_abs_lr', 'warmup_abs_lr',
                'warmup_epochs'):
    _require(math.isfinite(config[field]) and config[field] >= 0,
             f'config.{field}={config[field]}: expected a finite value >= 0')
  _require(config.batch_size >= 2, f'config.batch_size={config.batch_size}: the contrastive '
           'loss needs at least 2 examples per batch (1 scores 0 at every step)')
  optimizer.steps_per_epoch(config)  # at least one whole step per epoch
  _require(config.model.clr.logit_scale_clamp in ('forward', 'after_update'),
           f'config.model.clr.logit_scale_clamp={config.model.clr.logit_scale_clamp!r}: '
           "expected 'forward' or 'after_update'")
  _require(img.masking.view_crops in ('shared', 'separate'),
           f'config.model.model_img.masking.view_crops={img.masking.view_crops!r}: expected '
           "'shared' or 'separate'")
  _require(img.masking.view_crops == 'shared' or img.masking.num_views >= 2,
           "config.model.model_img.masking.view_crops='separate' crops each view apart: set "
           f'config.model.model_img.masking.num_views >= 2 (it is {img.masking.num_views})')
  clr = config.model.clr
  _require(clr.clr_loss, 'config.model.clr.clr_loss=False: the contrastive loss is the only '
           'objective (as in FLIP); set it to True')
  _require(clr.tau > 0 and clr.tau_init > 0, f'config.model.clr.tau={clr.tau} and tau_init='
           f'{clr.tau_init}: temperatures must be positive')
  txt = config.model.model_txt
  _require(txt.mask_ratio == 0.0, f'config.model.model_txt.mask_ratio={txt.mask_ratio}: text '
           'tokens are never masked (FLIP\'s model refuses it too); set 0.0')
  _require(not txt.sincos, 'config.model.model_txt.sincos=True: the text tower\'s position '
           'embedding is learned (FLIP\'s model refuses sin-cos too); set False')
  for tower in ('model_img', 'model_txt'):
    cfg = config.model[tower].transformer
    for field in ('dropout_rate', 'attention_dropout_rate', 'droppath_rate'):
      _require(0.0 <= cfg[field] < 1.0, f'config.model.{tower}.transformer.{field}='
               f'{cfg[field]}: expected a probability in [0, 1)')
    _require(cfg.remat_policy in transformer.REMAT_POLICIES,
             f'config.model.{tower}.transformer.remat_policy={cfg.remat_policy!r}: expected '
             f'one of {sorted(transformer.REMAT_POLICIES)}')
