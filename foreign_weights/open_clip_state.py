"""open_clip's CLIP checkpoints, read into this project's parameters and written from them.

What open_clip users hold: a training checkpoint (`epoch_K.pt`, its `state_dict` with DDP's
`module.` prefixes), a plain state dict (`.pt`, `.bin`, `.pth`, `.safetensors`), or a folder
in the Hugging Face layout (`open_clip_config.json` with `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`), which `open_clip.create_model_and_transforms('local-dir:DIR')`
opens. Pickled files are read with torch's `weights_only` loader, which runs no code from the
file; torch is needed for them alone (safetensors need numpy only).

Layouts: a torch Linear weight is (out, in) and is used as x @ W.T, a Flax kernel (in, out);
q, k and v are stacked in `in_proj_weight` [3D, D]; a conv weight is (out, in, h, w), a Flax
kernel (h, w, in, out); `visual.proj` and `text_projection` are used as x @ W, as Flax's.
"""

import json
import os
import re
from typing import Dict, Optional, Tuple

from absl import logging
import numpy as np

from foreign_weights import layout
from foreign_weights import whole_folder
from models.vit import sincos_2d

CONFIG_FILE = 'open_clip_config.json'
SAFETENSORS_FILE = 'open_clip_model.safetensors'
PYTORCH_FILE = 'open_clip_pytorch_model.bin'
TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
# What an export writes (the config first: it marks a folder as one); nothing else is kept.
EXPORT_FILES = (CONFIG_FILE, SAFETENSORS_FILE, PYTORCH_FILE, TOKENIZER_FILE,
                TOKENIZER_CONFIG_FILE)
PICKLE_SUFFIXES = ('.pt', '.bin', '.pth')
SUFFIXES = PICKLE_SUFFIXES + ('.safetensors',)

# Wrappers a training run puts around the model's names: DDP, torch.compile.
_PREFIXES = ('module.', '_orig_mod.')

# open_clip's names below the tower -> ours, for names that map one to one.
_TOP = {
    'visual.class_embedding': 'image/cls',
    'visual.positional_embedding': 'image/pos_embedding',
    'visual.conv1.weight': 'image/patch_embedding/kernel',
    'visual.ln_pre.weight': 'image/norm_pre/scale',
    'visual.ln_pre.bias': 'image/norm_pre/bias',
    'visual.ln_post.weight': 'image/encoder/norm_out/scale',
    'visual.ln_post.bias': 'image/encoder/norm_out/bias',
    'visual.proj': 'image/projection/kernel',
    'token_embedding.weight': 'text/token_embedding/embedding',
    'positional_embedding': 'text/pos_embedding',
    'ln_final.weight': 'text/encoder/norm_out/scale',
    'ln_final.bias': 'text/encoder/norm_out/bias',
    'text_projection': 'text/projection/kernel',
    'logit_scale': 'logit_scale',
    'logit_bias': 'logit_bias',  # the sigmoid loss's (open_clip's SigLIP models)
}
_BLOCK = {
    'ln_1.weight': 'norm_attention/scale', 'ln_1.bias': 'norm_attention/bias',
    'ln_2.weight': 'norm_mlp/scale', 'ln_2.bias': 'norm_mlp/bias',
    'attn.out_proj.weight': 'attention/out/kernel', 'attn.out_proj.bias': 'attention/out/bias',
    'mlp.c_fc.weight': 'mlp/Dense_0/kernel', 'mlp.c_fc.bias': 'mlp/Dense_0/bias',
    'mlp.c_proj.weight': 'mlp/Dense_1/kernel', 'mlp.c_proj.bias': 'mlp/Dense_1/bias',
}
_QKV = ('query', 'key', 'value')
_TOWER_BLOCKS = {'visual.transformer.resblocks.': 'image/encoder/block_',
                 'transformer.resblocks.': 'text/encoder/block_'}


class ExportError(ValueError):
  """A model this project trained that open_clip cannot express; names the config field."""


# --- Reading files -------------------------------------------------------------------------

def find(path: str) -> Optional[str]:
  """The weights file behind `path` when it is in one of open_clip's forms, else None."""
  if os.path.isdir(path):
    for name in (SAFETENSORS_FILE, PYTORCH_FILE):
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    return None
  if os.path.isfile(path) and path.endswith(SUFFIXES):
    return path
  return None


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  # The flax framework reads bfloat16, which numpy alone cannot hold.
  try:
    with safe_open(path, framework='flax') as f:
      return {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError and what it wraps)
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise ValueError(f'{path} is not a readable safetensors file ({type(e).__name__}: '
                     f'{cause}); download or copy it again') from e


def _read_pickle(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
        f'{path} is a PyTorch pickle, which needs torch to read: pip install torch (or '
        'convert it to .safetensors, which needs no torch)') from e
  try:
    contents = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise ValueError(f'{path} cannot be read as tensors alone (torch.load with weights_only:'
                     f' {type(e).__name__}: {first}); only state dicts and open_clip '
                     'training checkpoints are read, never code') from e
  if isinstance(contents, dict) and isinstance(contents.get('state_dict'), dict):
    contents = contents['state_dict']  # a training checkpoint, epoch_K.pt
  if not isinstance(contents, dict):
    raise ValueError(f'{path} holds a {type(contents).__name__}, not a state dict')
  return {name: value.detach().float().numpy() for name, value in contents.items()
          if isinstance(value, torch.Tensor)}


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """open_clip's state dict behind `path` (find()), as float32 numpy, prefixes removed."""
  weights = find(path)
  if weights is None:
    raise FileNotFoundError(f'{path!r} is not an open_clip checkpoint (a {"/".join(SUFFIXES)} '
                            f'file, or a folder holding {SAFETENSORS_FILE} or {PYTORCH_FILE})')
  state = (_read_safetensors(weights) if weights.endswith('.safetensors') else
           _read_pickle(weights))
  unwrapped, original = {}, {}
  for name, value in state.items():
    stripped = name
    for prefix in _PREFIXES:
      while stripped.startswith(prefix):
        stripped = stripped[len(prefix):]
    if stripped in unwrapped:
      raise ValueError(f'{weights}: the tensors {original[stripped]!r} and {name!r} are both '
                       f'{stripped!r} once the wrappers\' prefixes ({", ".join(_PREFIXES)}) are '
                       'removed; keep one of them')
    unwrapped[stripped], original[stripped] = value, name
  logging.info('Reading open_clip checkpoint %s: %d tensors', weights, len(unwrapped))
  return unwrapped


# --- open_clip -> ours ---------------------------------------------------------------------

def _our_block_name(name: str) -> Optional[Tuple[str, str]]:
  """(our block prefix, open_clip's name inside the block) for a block tensor, else None."""
  for theirs, ours in _TOWER_BLOCKS.items():
    if name.startswith(theirs) and (name[len(theirs):].split('.', 1)[0].isdigit()):
      index, rest = name[len(theirs):].split('.', 1)
      return f'{ours}{int(index):02d}', rest
  return None


def to_params(state: Dict[str, np.ndarray], target_shapes: Dict[str, tuple],
              source: str) -> Dict[str, np.ndarray]:
  """open_clip's tensors under our flat names and layouts, in the layout of `target_shapes`
  (stacked when the model scans its blocks). A tensor that maps to no name is refused here;
  names the model needs that the checkpoint lacks, and shapes, are the caller's to check."""
  heads = {}
  for name, shape in target_shapes.items():
    match = re.match(r'(image|text)/encoder/(blocks|block_\d+)/attention/query/kernel', name)
    if match:
      heads[match.group(1)] = shape[-2]
  ours, unknown = {}, []
  for name, value in state.items():
    if name in _TOP:
      mine = _TOP[name]
      if name == 'visual.conv1.weight':
        value = value.transpose(2, 3, 1, 0)
      elif name == 'visual.class_embedding':
        value = value.reshape(1, 1, -1)
      elif name in ('visual.positional_embedding', 'positional_embedding'):
        value = value[None]
      elif name in ('logit_scale', 'logit_bias'):
        value = value.reshape(())
      ours[mine] = value
      continue
    block = _our_block_name(name)
    if block is None:
      unknown.append(name)
      continue
    prefix, rest = block
    num_heads = heads.get(prefix.split('/')[0])
    if rest in ('attn.in_proj_weight', 'attn.in_proj_bias'):
      if num_heads is None:
        unknown.append(name)
        continue
      for part, chunk in zip(_QKV, np.split(value, 3, axis=0)):
        if rest.endswith('weight'):
          ours[f'{prefix}/attention/{part}/kernel'] = chunk.T.reshape(
              chunk.shape[1], num_heads, -1)
        else:
          ours[f'{prefix}/attention/{part}/bias'] = chunk.reshape(num_heads, -1)
    elif rest in _BLOCK:
      if rest == 'attn.out_proj.weight':
        if num_heads is None:
          unknown.append(name)
          continue
        value = value.T.reshape(num_heads, -1, value.shape[0])
      elif rest.endswith('weight') and value.ndim == 2:
        value = value.T
      ours[f'{prefix}/{_BLOCK[rest]}'] = value
    else:
      unknown.append(name)
  if unknown:
    raise ValueError(f'{source}: {len(unknown)} tensors of the open_clip checkpoint map to '
                     f'no parameter of this model: {sorted(unknown)[:8]}'
                     f'{" ..." if len(unknown) > 8 else ""} (a CLIP of another kind: '
                     'only open_clip\'s ViT CLIP models are read)')
  return layout.in_layout_of(ours, target_shapes)


# --- ours -> open_clip ---------------------------------------------------------------------

def _image_positions(flat: Dict[str, np.ndarray], config) -> np.ndarray:
  """open_clip's [1 + N, D] table: row 0 the class token's. FLIP's tower has a fixed table
  for the patches only and a patch bias; both fold into a learned table exactly."""
  img = config.model.model_img
  kernel = flat['image/patch_embedding/kernel']
  width = kernel.shape[-1]
  grid = tuple(config.image_size // p for p in img.patches.size)
  if img.sincos:
    table = np.concatenate([np.zeros((1, width), np.float32), sincos_2d(grid, width)])
  elif img.cls_position:
    table = flat['image/pos_embedding'][0]
  else:
    table = np.concatenate([np.zeros((1, width), np.float32), flat['image/pos_embedding'][0]])
  table = table.copy()
  if 'image/patch_embedding/bias' in flat:
    table[1:] += flat['image/patch_embedding/bias']
  return table


def from_params(params, config) -> Dict[str, np.ndarray]:
  """open_clip's state dict (numpy, torch's layouts) for this project's parameters."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {name: np.asarray(value, np.float32) for name, value in
          traverse_util.flatten_dict(params, sep='/').items()}
  flat = layout.unstack_blocks(flat)
  inverse_top = {ours: theirs for theirs, ours in _TOP.items()}
  inverse_block = {ours: theirs for theirs, ours in _BLOCK.items()}
  inverse_towers = {ours: theirs for theirs, ours in _TOWER_BLOCKS.items()}
  state = {'visual.positional_embedding': _image_positions(flat, config)}
  qkv = {}
  for name, value in flat.items():
    if name in ('image/pos_embedding', 'image/patch_embedding/bias'):
      continue  # folded into visual.positional_embedding
    if name.startswith(('projector/', 'predictor/')):
      continue  # A-CLIP's training heads: not part of the CLIP
    if name in inverse_top:
      theirs = inverse_top[name]
      if name == 'image/patch_embedding/kernel':
        value = value.transpose(3, 2, 0, 1)
      elif name == 'image/cls':
        value = value.reshape(-1)
      elif name == 'text/pos_embedding':
        value = value[0]
      state[theirs] = value
      continue
    match = re.fullmatch(r'((?:image|text)/encoder/block_)(\d+)/(.*)', name)
    if not match:
      raise ExportError(f'parameter {name} has no place in open_clip\'s CLIP')
    prefix, index, rest = inverse_towers[match.group(1)], int(match.group(2)), match.group(3)
    part = re.fullmatch(r'attention/(query|key|value)/(kernel|bias)', rest)
    if part:
      qkv.setdefault((prefix, index, part.group(2)), {})[part.group(1)] = value
      continue
    if rest == 'attention/out/kernel':
      value = value.reshape(-1, value.shape[-1]).T
    elif rest.endswith('kernel'):
      value = value.T
    state[f'{prefix}{index}.{inverse_block[rest]}'] = value
  for (prefix, index, kind), parts in qkv.items():
    if kind == 'kernel':
      fused = np.concatenate([parts[p].reshape(parts[p].shape[0], -1).T for p in _QKV])
      state[f'{prefix}{index}.attn.in_proj_weight'] = fused
    else:
      state[f'{prefix}{index}.attn.in_proj_bias'] = np.concatenate(
          [parts[p].reshape(-1) for p in _QKV])
  return {name: np.ascontiguousarray(value, np.float32) for name, value in state.items()}


def model_config(config) -> dict:
  """open_clip's `model_cfg` for a run config, or an ExportError naming the field that
  open_clip cannot express."""
  img, txt, clr = config.model.model_img, config.model.model_txt, config.model.clr
  patch = tuple(img.patches.size)
  if patch[0] != patch[1]:
    raise ExportError(f'config.model.model_img.patches.size={patch}: open_clip\'s patches are '
                      'square')
  if clr.img_avg_token and clr.img_avg_with_cls:
    raise ExportError('config.model.clr.img_avg_with_cls=True: open_clip has no pooling that '
                      'averages the class token with the patches (its `avg` averages the '
                      'patches only: img_avg_with_cls=False)')
  if clr.proj_out_bias:
    raise ExportError('config.model.clr.proj_out_bias=True: open_clip\'s CLIP projections '
                      'have no bias')
  text_pool = txt.pool or ('mean' if clr.txt_avg_token else 'first')
  if text_pool not in ('first', 'argmax'):
    raise ExportError(f'text pooling {text_pool!r} (config.model.clr.txt_avg_token / '
                      'model.model_txt.pool): open_clip pools the first, last or argmax token')
  if txt.mask_padding:
    raise ExportError('config.model.model_txt.mask_padding=True: open_clip\'s text tower '
                      'attends to padding (only a causal mask); train with mask_padding=False '
                      'to export')
  if config.model.activation not in ('gelu', 'gelu_tanh', 'quick_gelu'):
    raise ExportError(f'config.model.activation={config.model.activation!r} has no open_clip '
                      'equivalent')

  def tower(cfg):
    width = cfg.hidden_size
    tower_cfg = {'width': width, 'layers': cfg.transformer.num_layers,
                 'mlp_ratio': cfg.transformer.mlp_dim / width}
    if config.model.activation == 'gelu_tanh':
      tower_cfg['act_kwargs'] = {'approximate': 'tanh'}
    if config.model.norm_eps != 1e-5:
      tower_cfg['norm_kwargs'] = {'eps': config.model.norm_eps}
    return tower_cfg

  vision = dict(tower(img), image_size=config.image_size, patch_size=patch[0],
                head_width=img.hidden_size // img.transformer.num_heads,
                pool_type='avg' if clr.img_avg_token else 'tok')
  if not img.pre_norm:
    vision['no_ln_pre'] = True
  text = dict(tower(txt), heads=txt.transformer.num_heads,
              context_length=config.aug.txt.max_len, vocab_size=txt.vocab_size,
              pool_type=text_pool)
  if not txt.causal:
    text['no_causal_mask'] = True
  if config.aug.txt.tokenizer == 'tf_bert':
    # open_clip reads a `local-dir:` folder's own tokenizer files (tokenizer_files) whatever
    # the name says. Elsewhere (a Hub copy) the name is what open_clip loads: BERT's own
    # tokenizer gives the trained ids only when they have [CLS] and [SEP]; otherwise the
    # name says where the right one is, and loading it by name fails rather than misleads.
    txt_cfg = config.aug.txt
    text['hf_tokenizer_name'] = ('bert-base-uncased' if txt_cfg.cls_token and txt_cfg.sep_token
                                 else 'the tokenizer.json of this folder')
  model_cfg = {'embed_dim': clr.proj_dim_out, 'vision_cfg': vision, 'text_cfg': text}
  if config.model.activation == 'quick_gelu':
    model_cfg['quick_gelu'] = True
  if config.model.loss == 'sigmoid':
    model_cfg['init_logit_bias'] = config.model.sigmoid.bias_init  # gives open_clip the bias
  return model_cfg


def preprocess_config(config) -> dict:
  """open_clip's `preprocess_cfg`: the run's pixel statistics, size and evaluation resize."""
  return {'mean': list(config.aug.pixel_mean), 'std': list(config.aug.pixel_std),
          'size': config.image_size, 'interpolation': 'bicubic', 'resize_mode': 'shortest'}


# --- An open_clip folder's own config ---------------------------------------------------------

# open_clip's defaults for the model_cfg and preprocess_cfg keys that are not falsy (its
# CLIPVisionCfg and CLIPTextCfg, open_clip/model.py; OPENAI_DATASET_MEAN and _STD).
_OPEN_CLIP_DEFAULTS = {
    'vision_cfg.layers': 12, 'vision_cfg.width': 768, 'vision_cfg.head_width': 64,
    'vision_cfg.mlp_ratio': 4.0, 'vision_cfg.patch_size': 16, 'vision_cfg.pool_type': 'tok',
    'vision_cfg.pos_embed_type': 'learnable', 'text_cfg.vocab_size': 49408,
    'text_cfg.width': 512, 'text_cfg.heads': 8, 'text_cfg.layers': 12,
    'text_cfg.mlp_ratio': 4.0, 'text_cfg.pool_type': 'argmax', 'text_cfg.proj_type': 'linear',
    'vision_cfg.norm_kwargs.eps': 1e-5, 'text_cfg.norm_kwargs.eps': 1e-5,
    'vision_cfg.act_kwargs.approximate': 'none', 'text_cfg.act_kwargs.approximate': 'none',
    'preprocess_cfg.mean': [0.48145466, 0.4578275, 0.40821073],
    'preprocess_cfg.std': [0.26862954, 0.26130258, 0.27577711],
}
# Keys that do not change what the weights compute once loaded: training-only settings, the
# tokenizer's (open_clip builds it from the same folder), sizes that loading resamples or
# cuts (positions), and the settings of options flagged by their own key (timm, HF towers).
_NOT_COMPUTED = ('patch_dropout', 'output_tokens', 'hf_tokenizer_name', 'tokenizer_kwargs',
                 'tokenizer_mode', 'context_length', 'image_size', 'eos_id', 'pad_id',
                 'attn_pooler_queries', 'attn_pooler_heads', 'init_logit_scale', 'cast_dtype',
                 'custom_text', 'block_type', 'timm_model_pretrained', 'timm_pool', 'timm_proj',
                 'timm_proj_bias', 'timm_drop', 'timm_drop_path', 'hf_model_pretrained',
                 'hf_proj_type', 'hf_pooler_type', 'interpolation', 'resize_mode', 'size',
                 'fill_color')
# The config field that sets each key here.
_OUR_FIELD = {
    'embed_dim': 'model.clr.proj_dim_out', 'quick_gelu': 'model.activation',
    'act_kwargs.approximate': 'model.activation', 'norm_kwargs.eps': 'model.norm_eps',
    'vision_cfg.width': 'model.model_img.hidden_size',
    'vision_cfg.layers': 'model.model_img.transformer.num_layers',
    'vision_cfg.head_width': 'model.model_img.transformer.num_heads',
    'vision_cfg.mlp_ratio': 'model.model_img.transformer.mlp_dim',
    'vision_cfg.patch_size': 'model.model_img.patches.size',
    'vision_cfg.pool_type': 'model.clr.img_avg_token',
    'vision_cfg.no_ln_pre': 'model.model_img.pre_norm',
    'text_cfg.width': 'model.model_txt.hidden_size',
    'text_cfg.layers': 'model.model_txt.transformer.num_layers',
    'text_cfg.heads': 'model.model_txt.transformer.num_heads',
    'text_cfg.mlp_ratio': 'model.model_txt.transformer.mlp_dim',
    'text_cfg.vocab_size': 'model.model_txt.vocab_size',
    'text_cfg.pool_type': 'model.model_txt.pool',
    'text_cfg.no_causal_mask': 'model.model_txt.causal',
    'init_logit_bias': 'model.loss',
    'preprocess_cfg.mean': 'aug.pixel_mean', 'preprocess_cfg.std': 'aug.pixel_std',
}


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
    return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b)))
  numbers = (int, float)
  if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
    return bool(np.isclose(a, b, rtol=1e-6, atol=0))
  return a == b or (not a and not b)  # absent, None, False, 0 and {} alike


def folder_config_differences(folder: str, config) -> list:
  """What FOLDER/open_clip_config.json describes otherwise than `config` would build: one
  line per key naming both values and the config field (empty when they agree, or when the
  folder has no such file)."""
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    return []
  try:
    with open(path) as f:
      theirs = json.load(f)
    theirs = {'preprocess_cfg': {}, **theirs}
    theirs = _flat({**theirs['model_cfg'], 'preprocess_cfg': theirs['preprocess_cfg']})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path} is not an open_clip config ({type(e).__name__}: {e}); expected '
                     'a JSON object with model_cfg') from e
  try:
    ours = _flat({**model_config(config), 'preprocess_cfg': {
        'mean': list(config.aug.pixel_mean), 'std': list(config.aug.pixel_std)}})
  except ExportError as e:
    return [f'this config is no open_clip model: {e}']
  lines = []
  for key in sorted(theirs.keys() | ours.keys()):
    if key.split('.')[-1] in _NOT_COMPUTED or key.split('.')[0] in _NOT_COMPUTED:
      continue
    there = theirs.get(key, _OPEN_CLIP_DEFAULTS.get(key))
    here = ours.get(key, _OPEN_CLIP_DEFAULTS.get(key))
    if isinstance(there, bool) or isinstance(here, bool):  # an option's absence is its off
      there, here = bool(there), bool(here)
    if key == 'init_logit_bias':  # whether the model has a bias, not where it started
      there, here = there is not None, here is not None
    if not _same(there, here):
      field = _OUR_FIELD.get(key) or _OUR_FIELD.get(key.split('.', 1)[-1])
      sets = f' (config.{field})' if field else ' (this project has no such option)'
      lines.append(f'{key}: {there!r} there, {here!r} here{sets}')
  return lines


def tokenizer_files(config) -> Dict[str, str]:
  """{file name: text} of the tokenizer an export carries: none for CLIP's BPE (open_clip's
  own); for WordPiece, Hugging Face's files giving the ids the model trained with, which
  open_clip reads from a `local-dir:` folder (test_open_clip checks the ids)."""
  if config.aug.txt.tokenizer != 'tf_bert':
    return {}
  from input_pipeline import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  txt = config.aug.txt
  wordpiece = tokenizer_lib.BertTokenizer(txt.max_len, txt.cls_token, txt.sep_token)
  settings = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': txt.max_len,
              'pad_token': '[PAD]', 'unk_token': '[UNK]', 'cls_token': '[CLS]',
              'sep_token': '[SEP]', 'mask_token': '[MASK]'}
  return {TOKENIZER_FILE: wordpiece.hugging_face().to_str(),
          TOKENIZER_CONFIG_FILE: json.dumps(settings, indent=2)}


def export(params, config, out_dir: str) -> Dict[str, str]:
  """Writes OUT/open_clip_config.json, OUT/open_clip_model.safetensors and, for WordPiece,
  the tokenizer's files; returns their paths. Refuses (ExportError) before writing anything
  when open_clip cannot express the model. The folder is replaced whole, under a lock
  (foreign_weights/whole_folder.py): a second export to it at the same time is refused, and
  an interrupted one leaves the previous export as it was."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model_cfg = model_config(config)
  state = from_params(params, config)
  tokenizer = tokenizer_files(config)
  if config.model.activation == 'gelu_tanh':
    logging.info('The export uses open_clip\'s nn.GELU(approximate="tanh"): FLIP\'s GELU')

  def write(folder):
    with open(os.path.join(folder, CONFIG_FILE), 'w') as f:
      json.dump({'model_cfg': model_cfg, 'preprocess_cfg': preprocess_config(config)}, f,
                indent=2)
    save_file(state, os.path.join(folder, SAFETENSORS_FILE), metadata={'format': 'pt'})
    for name, text in tokenizer.items():
      with open(os.path.join(folder, name), 'w', encoding='utf-8') as f:
        f.write(text)

  whole_folder.replace(out_dir, write, EXPORT_FILES)
  paths = {'config': os.path.join(out_dir, CONFIG_FILE),
           'weights': os.path.join(out_dir, SAFETENSORS_FILE)}
  if tokenizer:
    paths['tokenizer'] = os.path.join(out_dir, TOKENIZER_FILE)
  return paths
