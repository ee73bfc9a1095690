"""FLIP's release restated for tests: its config values, its forward pass in numpy, and
t5x's on-disk checkpoint layout. Written from the release's documented behaviour, sharing
no code with the project, so that the project is checked against an independent answer.
"""

import os

import jax
import numpy as np
from flax import serialization
import tensorstore as ts

# FLIP's configs/default.py, flattened.
FLIP_DEFAULT = {
    'eval_dataset': 'imagenet2012:5.*.*', 'laion_path': '', 'learning_rate': 4e-6,
    'warmup_epochs': 40.0, 'min_abs_lr': 0.0, 'warmup_abs_lr': 0.0, 'num_epochs': 10000.0,
    'log_every_steps': 200, 'save_every_epochs': 100, 'batch_size': 65536, 'cache': True,
    'opt_type': 'adamw', 'opt.b1': 0.9, 'opt.b2': 0.95, 'opt.weight_decay': 0.2,
    'opt_mu_dtype': 'float32', 'exclude_wd': True, 'opt.flatten_params': False,
    'aug.area_range': (0.5, 1), 'aug.aspect_ratio_range': (3.0 / 4, 4.0 / 3.0),
    'aug.crop_ver': 'v4', 'aug.eval_pad': 0, 'aug.flip': True, 'aug.txt.tokenizer': 'tf_bert',
    'aug.txt.max_len': 32, 'aug.txt.cls_token': False, 'resume_dir': '',
    'vis_every_epochs': 20.0, 'pretrain_dir': '', 'seed_jax': 0, 'seed_tf': 0, 'seed_pt': 0,
    'partitioning.num_partitions': 1, 'partitioning.partition_states': False,
    'image_size': 224, 'samples_per_epoch': 1281167, 'eval_only': False,
    'model.clr.tau': 0.01, 'model.clr.tau_learnable': True, 'model.clr.proj_dim_out': 768,
    'model.clr.proj_out_bias': False, 'model.clr.clr_loss': True,
    'model.clr.img_avg_token': True, 'model.clr.txt_avg_token': False,
    'model.model_img.mask_ratio': 0.5, 'model.model_img.sincos': True,
    'model.model_img.name': 'img_encoder', 'model.model_img.patches.size': (16, 16),
    'model.model_img.hidden_size': 1024, 'model.model_img.transformer.mlp_dim': 4096,
    'model.model_img.transformer.num_heads': 16, 'model.model_img.transformer.num_layers': 24,
    'model.model_img.transformer.attention_dropout_rate': 0.0,
    'model.model_img.transformer.dropout_rate': 0.0,
    'model.model_img.transformer.droppath_rate': 0.0,
    'model.model_img.transformer.remat_policy': 'none',
    'model.model_txt.mask_ratio': 0.0, 'model.model_txt.sincos': False,
    'model.model_txt.name': 'txt_encoder', 'model.model_txt.vocab_size': 30523,
    'model.model_txt.hidden_size': 768, 'model.model_txt.transformer.mlp_dim': 3072,
    'model.model_txt.transformer.num_heads': 12, 'model.model_txt.transformer.num_layers': 12,
    'model.model_txt.transformer.attention_dropout_rate': 0.0,
    'model.model_txt.transformer.dropout_rate': 0.0,
    'model.model_txt.transformer.droppath_rate': 0.0,
}

_HUGE = {
    'model.model_img.patches.size': (14, 14), 'model.model_img.hidden_size': 1280,
    'model.model_img.transformer.mlp_dim': 5120, 'model.model_img.transformer.num_heads': 16,
    'model.model_img.transformer.num_layers': 32, 'model.model_txt.hidden_size': 1024,
    'model.model_txt.transformer.mlp_dim': 4096, 'model.model_txt.transformer.num_heads': 16,
    'model.model_txt.transformer.num_layers': 24, 'model.clr.proj_dim_out': 1024,
    'partitioning.partition_states': True, 'opt.flatten_params': True, 'warmup_epochs': 200,
}

# What each of FLIP's recipe files changes.
FLIP_RECIPES = {
    'cfg_flip_base': {
        'num_epochs': 10000.0, 'model.model_img.mask_ratio': 0.5,
        'model.model_img.hidden_size': 768, 'model.model_img.transformer.mlp_dim': 3072,
        'model.model_img.transformer.num_heads': 12,
        'model.model_img.transformer.num_layers': 12, 'model.model_txt.hidden_size': 512,
        'model.model_txt.transformer.mlp_dim': 2048, 'model.model_txt.transformer.num_heads': 8,
        'model.model_txt.transformer.num_layers': 12, 'model.clr.proj_dim_out': 512},
    'cfg_flip_large': {'num_epochs': 10000.0, 'model.model_img.mask_ratio': 0.5,
                       'partitioning.partition_states': True},
    'cfg_flip_huge14': {'num_epochs': 10000.0, 'model.model_img.mask_ratio': 0.5, **_HUGE},
    'cfg_flip_large_L2B_2x': {'num_epochs': 20000.0, 'model.model_img.mask_ratio': 0.5,
                              'partitioning.partition_states': True, 'learning_rate': 2e-6},
    'cfg_flip_huge14_L2B_2x': {'num_epochs': 20000.0, 'model.model_img.mask_ratio': 0.5,
                               'learning_rate': 2e-6, **_HUGE},
}


# --- FLIP's forward pass, in numpy --------------------------------------------------------

def flip_sincos_table(grid_side: int, width: int) -> np.ndarray:
  """FLIP's stored image position table: (1, 1 + N, D), a zero row for the class token, then
  [sin, cos] of the column index and [sin, cos] of the row index per patch, in that order."""
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float32) / quarter)
  rows = []
  for y in range(grid_side):
    for x in range(grid_side):
      rows.append(np.concatenate([np.sin(x * omega), np.cos(x * omega),
                                  np.sin(y * omega), np.cos(y * omega)]))
  return np.concatenate([np.zeros((1, width)), np.array(rows)])[None].astype(np.float32)


def _layer_norm(x, p, xp=np):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / xp.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _gelu(x, xp=np):
  return 0.5 * x * (1 + xp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _block(x, p, heads, xp=np):
  batch, length, width = x.shape
  head_dim = width // heads
  y = _layer_norm(x, p['LayerNorm_0'], xp)
  a = p['MultiHeadDotProductAttention_0']

  def project(name):
    return (y @ a[name]['kernel'] + a[name]['bias']).reshape(batch, length, heads, head_dim)

  q, k, v = project('query') / np.sqrt(head_dim), project('key'), project('value')
  logits = xp.einsum('bqhd,bkhd->bhqk', q, k)  # every token, padding included
  weights = xp.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = xp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, width)
  x = x + attended @ a['out']['kernel'] + a['out']['bias']
  m = p['MlpBlock_0']
  h = _gelu(_layer_norm(x, p['LayerNorm_1'], xp) @ m['Dense_0']['kernel']
            + m['Dense_0']['bias'], xp)
  return x + h @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


def _encoder(x, p, heads, xp=np):
  names = sorted(k for k in p if k.startswith('encoderblock_'))
  for name in names:
    x = _block(x, p[name], heads, xp)
  return _layer_norm(x, p['encoder_norm'], xp)


def _normalise(z, xp=np):
  return z / (xp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def _image_tokens(params, images, patch, keep_idx=None, xp=np):
  """Encoded tokens [B, 1 + K, D]: patches (the kept ones, models_flip.py:253-286) with their
  positions, the class token in front without one."""
  p = params['img_encoder']
  batch, height, width, _ = images.shape
  gh, gw = height // patch, width // patch
  pieces = images.reshape(batch, gh, patch, gw, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  x = xp.einsum('bhwpqc,pqcd->bhwd', pieces, p['embedding']['kernel']) + p['embedding']['bias']
  x = x.reshape(batch, gh * gw, -1) + p['posembed_encoder']['pos_embedding'][:, 1:]
  if keep_idx is not None:
    x = xp.take_along_axis(x, keep_idx[..., None], axis=1)
  cls = xp.broadcast_to(p['cls'], (batch, 1, x.shape[-1]))
  return xp.concatenate([cls, x], 1)


def flip_image_embedding(params, images, patch, heads, keep_idx=None, xp=np):
  """images float [B, H, W, 3] (normalised) -> [B, E], as FLIP's evaluation computes it."""
  x = _encoder(_image_tokens(params, images, patch, keep_idx, xp),
               params['img_encoder']['Transformer'], heads, xp)
  return _normalise(x.mean(axis=1) @ params['img_mlp1']['kernel'], xp)


def flip_text_embedding(params, tokens, heads, xp=np):
  """tokens int [B, L] -> [B, E]: every token attended to, the first one pooled."""
  p = params['txt_encoder']
  x = p['token_embedding']['embedding'][tokens]
  x = x + p['posembed_encoder']['pos_embedding'][:, :tokens.shape[1]]
  x = _encoder(x, p['Transformer'], heads, xp)
  return _normalise(x[:, 0] @ params['txt_mlp1']['kernel'], xp)


def random_flip_params(rng, *, image_width, text_width, layers, mlp_dim, embed, patch,
                       grid_side, vocab, max_len):
  """FLIP-named parameters (nested dicts), attention kernels flattened as FLIP stores them."""
  def normal(*shape, scale=0.2):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  def norm(width):
    return {'scale': 1 + normal(width, scale=0.1), 'bias': normal(width, scale=0.1)}

  def tower(width):
    blocks = {}
    for i in range(layers):
      attention = {name: {'kernel': normal(width, width), 'bias': normal(width, scale=0.1)}
                   for name in ('query', 'key', 'value', 'out')}
      blocks[f'encoderblock_{i:02d}'] = {
          'LayerNorm_0': norm(width), 'LayerNorm_1': norm(width),
          'MultiHeadDotProductAttention_0': attention,
          'MlpBlock_0': {'Dense_0': {'kernel': normal(width, mlp_dim),
                                     'bias': normal(mlp_dim, scale=0.1)},
                         'Dense_1': {'kernel': normal(mlp_dim, width),
                                     'bias': normal(width, scale=0.1)}}}
    blocks['encoder_norm'] = norm(width)
    return {'Transformer': blocks}

  image = tower(image_width)
  image.update(embedding={'kernel': normal(patch, patch, 3, image_width, scale=0.05),
                          'bias': normal(image_width, scale=0.1)},
               cls=normal(1, 1, image_width),
               posembed_encoder={'pos_embedding': flip_sincos_table(grid_side, image_width)})
  text = tower(text_width)
  text.update(token_embedding={'embedding': normal(vocab, text_width)},
              posembed_encoder={'pos_embedding': normal(1, max_len, text_width)})
  return {'img_encoder': image, 'txt_encoder': text,
          'img_mlp1': {'kernel': normal(image_width, embed)},
          'txt_mlp1': {'kernel': normal(text_width, embed)},
          'logit_scale': np.array([np.log(1 / 0.07)], np.float32)}


# --- t5x's checkpoint layout --------------------------------------------------------------

def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def write_t5x_checkpoint(workdir, params, step, *, bucket=None, inline=(),
                         with_optimizer_state=True):
  """Writes `params` as t5x does: WORKDIR/checkpoint_STEP/checkpoint (msgpack) plus one zarr
  array per parameter named by its dotted path. With `bucket`, the specs name a GCS bucket
  as a run written to one does (half with the old spec form, path beside the kvstore);
  parameters named in `inline` are stored in the msgpack itself. Returns the step folder."""
  step_dir = os.path.join(workdir, f'checkpoint_{step}')
  os.makedirs(step_dir, exist_ok=True)
  tree = {}

  def spec_for(path, array, index):
    dotted = '.'.join(path)
    metadata = {'compressor': {'id': 'gzip'}, 'shape': list(array.shape),
                'chunks': list(array.shape)}
    store = ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file',
                                                  'path': os.path.join(step_dir, dotted)},
                     'metadata': metadata, 'dtype': array.dtype.name},
                    create=True, delete_existing=True).result()
    store.write(array).result()
    if bucket is None:
      return {'driver': 'zarr', 'dtype': array.dtype.name, 'metadata': metadata,
              'kvstore': {'driver': 'file', 'path': dotted}}
    if index % 2:
      return {'driver': 'zarr', 'dtype': array.dtype.name, 'path': dotted,
              'kvstore': {'driver': 'gcs', 'bucket': bucket}}
    return {'driver': 'zarr', 'dtype': array.dtype.name,
            'kvstore': {'driver': 'gcs', 'bucket': bucket, 'path': dotted}}

  for index, (path, array) in enumerate(_flatten(params)):
    name = '/'.join(path)
    array = np.asarray(array)
    _set(tree, path, array if name in inline else spec_for(('target',) + path, array, index))
  optimizer = {'target': tree}
  if with_optimizer_state:
    states = {}
    for index, (path, array) in enumerate(_flatten(params)):
      _set(states, path + ('v',),
           spec_for(('state', 'param_states') + path + ('v',), np.abs(array) * 0.01, index))
    optimizer['state'] = {'step': np.int32(step), 'param_states': states}
  with open(os.path.join(step_dir, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize({'version': 3, 'optimizer': optimizer}))
  return step_dir


# --- FLIP's training step, schedule and AdamW, in jax.numpy ---------------------------------

def flip_contrastive_loss(z0, z1, logit_scale, xp):
  """models_flip.py:480-523: the scale clipped to [0, log 100], hand-written log-softmax."""
  scale = xp.exp(xp.clip(logit_scale, 0, np.log(100)))
  logits = xp.einsum('nc,mc->nm', z0, z1) * scale
  logits_pos = xp.einsum('nc,nc->n', z0, z1) * scale
  exp_logits = xp.exp(logits)
  loss01 = -(logits_pos - xp.log(xp.sum(exp_logits, axis=-1)))
  loss10 = -(logits_pos - xp.log(xp.sum(exp_logits, axis=0)))
  return (loss01.mean() + loss10.mean()) / 2


def flip_train_loss(params, images, tokens, keep_idx, patch, heads, xp):
  """models_flip.py:531-569 with train=True: mean over every token (class token included),
  first text token, then the loss. The sin-cos table is a parameter whose gradient is
  stopped (utils/posembed_util.py:70)."""
  table = params['img_encoder']['posembed_encoder']['pos_embedding']
  params = {**params, 'img_encoder': {**params['img_encoder'], 'posembed_encoder': {
      'pos_embedding': jax.lax.stop_gradient(table)}}}
  z_img = flip_image_embedding(params, images, patch, heads, keep_idx, xp)
  z_txt = flip_text_embedding(params, tokens, heads, xp)
  return flip_contrastive_loss(z_img, z_txt, params['logit_scale'][0], xp)


def flip_steps_per_epoch(samples_per_epoch, batch_size):
  return samples_per_epoch // batch_size  # train.py:313


def flip_total_steps(num_epochs, samples_per_epoch, batch_size):
  # train.py:428-432: int(num_epochs) epochs of steps_per_epoch steps.
  return int(num_epochs) * flip_steps_per_epoch(samples_per_epoch, batch_size)


def flip_learning_rate(step, *, learning_rate, batch_size, warmup_epochs, num_epochs,
                       samples_per_epoch, warmup_abs_lr=0.0, min_abs_lr=0.0):
  """t5x/train_state_initializer.py:42-59 and 64-67 in float64: a linear warmup over
  warmup_epochs * steps_per_epoch steps, then optax's cosine over
  max(num_epochs - warmup_epochs, 1) epochs, joined at the warmup's end."""
  step = np.asarray(step, np.float64)
  per_epoch = flip_steps_per_epoch(samples_per_epoch, batch_size)
  base = learning_rate * batch_size / 256.0
  warmup = warmup_epochs * per_epoch
  rise = warmup_abs_lr + (base - warmup_abs_lr) * np.clip(step, 0, warmup) / max(warmup, 1e-30)
  decay_steps = max(num_epochs - warmup_epochs, 1) * per_epoch
  alpha = min_abs_lr / base
  t = np.minimum(np.maximum(step - warmup, 0), decay_steps)
  cosine = base * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * t / decay_steps)) + alpha)
  return np.where(step < warmup, rise, cosine)


def flip_decays(path):
  """utils/opt_util.py filter_bias_and_norm and filter_posembed, both required
  (t5x/train_state_initializer.py:74-82): not biases, not scales, not position tables."""
  return not (path[-1] in ('bias', 'scale') or 'pos_embedding' in '.'.join(path))


def flip_adamw_step(params, grads, mu, nu, count, learning_rate, *, b1, b2, weight_decay,
                    eps=1e-8):
  """utils/adamw.py:73-147: Adam's moments (the first never cast back to opt_mu_dtype),
  bias correction, then weight decay on flip_decays' parameters, then -learning_rate."""
  new = {}, {}, {}
  count = count + 1
  for path, p in _flatten(params):
    g, m, v = _get(grads, path), _get(mu, path), _get(nu, path)
    m = (1 - b1) * g + b1 * m
    v = (1 - b2) * g ** 2 + b2 * v
    update = (m / (1 - b1 ** count)) / (np.sqrt(v / (1 - b2 ** count)) + eps)
    if flip_decays(path):
      update = update + weight_decay * p
    _set(new[0], path, p - learning_rate * update)
    _set(new[1], path, m)
    _set(new[2], path, v)
  return new[0], new[1], new[2], count


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree
