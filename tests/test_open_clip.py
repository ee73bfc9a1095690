"""open_clip's CLIP here, checked against open_clip's own code: its tokenizer's ids, its
checkpoints loaded, this project's checkpoints exported and opened by open_clip, and
CLIP_benchmark's command on an export. open_clip runs in processes of its own
(tests/open_clip_reference.py)."""

import json
import os
import pickle
import string
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import shutil
import signal
import tensorflow as tf

from configs import openclip_vit_b16
from configs import presets
from foreign_weights import open_clip_state
from foreign_weights import whole_folder
from input_pipeline import tokenizer as tokenizer_lib
import masking
from models import clip
from tests.conftest import ROOT, main_command, micro_config
from tools import export_open_clip
import train
from trainer import checkpoints
from trainer import objective as objective_lib
from trainer import optimizer
from trainer import pretrained
from trainer import state as state_lib
from trainer import step as step_lib

HARD_CAPTIONS = [
    '', '   \t\n  ', 'a photo of a cat.', 'A Photo OF a Cat', "it's what they've said, I'd",
    'caf\u00e9 na\u00efve \u00fcber \u00c5ngstr\u00f6m', 'cafÃ© mojibake â€œquotedâ€\x9d',
    '\u201ccurly\u201d \u2018quotes\u2019 \u2014 dash\u2026', 'AT&amp;T &lt;b&gt;bold&lt;/b&gt;',
    '&amp;amp;amp; twice', 'fish &amp chips',
    '\u732b\u304c\u597d\u304d \u4e2d\u6587 \ud55c\uad6d\uc5b4',
    'emoji \U0001F431\U0001F436 \u2764\ufe0f',
    'ligature \ufb01sh \ufb02ow', '\uff26\uff55\uff4c\uff4c width',
    'tab\tnew\nline\r\nreturn', 'vertical\x0btab form\x0cfeed', 'nul\x00char bell\x07',
    'escape \x1b[31mred\x1b[0m', 'literal <start_of_text> and <end_of_text> tokens',
    '1234567890 3.14159 1,000,000', 'snake_case camelCase kebab-case', 'a' * 300,
    ' '.join(['the quick brown fox jumps over the lazy dog'] * 12),
]
# Where TensorFlow Text's WordPiece and Hugging Face's BERT normalizer part ways unless told:
# case folding beyond lower case, compatibility forms, control characters inside words.
WORDPIECE_CAPTIONS = HARD_CAPTIONS + [
    'Stra\u00dfe GROSS \u1e9e', '\u03a3\u0391\u03a3 \u03c2 \u0130stanbul', '\u212a kelvin \u2126 ohm',
    '\u00bd \u2460 \u00b2 \uff8a\uff9d\uff76\uff78', 'x\x1fy\x7fz\x80w', '\ufeffbom zero\u200bwidth',
    'soft\u00adhyphen e\u0301 combining', '\u01c4 \u01c5 \u01c8 \ufb00 \ufb05',
    '\u65e5\u672c\u8a9e\u306e\u6587\u7ae0', 'na\u00efve r\u00e9sum\u00e9', '\u1fb3 \u1ff3 \u1fbc',
]


def reference(*args):
  """Runs tests/open_clip_reference.py; its stderr is shown when it fails."""
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'open_clip_reference.py'),
                           *map(str, args)], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def open_clip_ids(tmp_path, captions, model='ViT-B-16'):
  """The ids of open_clip.get_tokenizer(model)."""
  with open(tmp_path / 'captions.json', 'w') as f:
    json.dump(captions, f)
  reference('tokenize', '--model', model, f'--captions={tmp_path / "captions.json"}', '--out',
            tmp_path / 'ids.npz')
  return np.load(tmp_path / 'ids.npz')['ids']


def test_clip_bpe_gives_open_clips_ids(tmp_path):
  rng = np.random.default_rng(0)
  alphabet = list(string.printable) + ['&amp;', '&#39;', '\x0b', '\x7f', '\x1b']
  fuzz = [''.join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(300)]
  captions = HARD_CAPTIONS + fuzz
  want = open_clip_ids(tmp_path, captions)
  tokenize = tokenizer_lib.from_config(openclip_vit_b16.get_config())
  ours = np.asarray(tokenize(captions))
  assert ours.dtype == np.int32 and ours.shape == (len(captions), 77)
  for caption, got, expected in zip(captions, ours, want):
    np.testing.assert_array_equal(got, expected, err_msg=repr(caption))
  # As the input pipeline runs it: a batch of UTF-8 strings inside a tf.data map.
  batches = tf.data.Dataset.from_tensor_slices(captions).batch(64).map(tokenize)
  np.testing.assert_array_equal(np.concatenate(list(batches.as_numpy_iterator())), want)
  assert tokenize('a photo').shape == (77,)
  # Over 77 tokens: truncated, the end-of-text token kept last.
  long_row = ours[captions.index(HARD_CAPTIONS[-1])]
  assert long_row[0] == 49406 and long_row[-1] == 49407 and 0 not in long_row


def test_both_tokenizers_map_a_list_to_int32_ids(demo_dir):
  for config in (micro_config(demo_dir), openclip_vit_b16.get_config()):
    ids = np.asarray(tokenizer_lib.from_config(config)(['a red circle', 'two']))
    assert ids.dtype == np.int32 and ids.shape == (2, config.aug.txt.max_len)


# --- open_clip's ViT-B-16 checkpoints, loaded ----------------------------------------------

@pytest.fixture(scope='module')
def open_clip_b16(tmp_path_factory):
  """open_clip's ViT-B-16 (random, perturbed) saved both ways, and its embeddings of two
  images and three hard captions."""
  out = tmp_path_factory.mktemp('open_clip_b16')
  reference('make', '--model', 'ViT-B-16', '--out', out)
  config = openclip_vit_b16.get_config()
  rng = np.random.default_rng(1)
  inputs = {'pixels': rng.standard_normal((2, 224, 224, 3)).astype(np.float32),
            'tokens': np.asarray(tokenizer_lib.from_config(config)(HARD_CAPTIONS[5:8]))}
  np.savez(out / 'inputs.npz', **inputs)
  reference('embed', '--model', f'local-dir:{out / "hf"}', f'--inputs={out / "inputs.npz"}',
            '--out', out / 'embeddings.npz')
  return out, config, inputs, dict(np.load(out / 'embeddings.npz'))


def init_params(model, inputs):
  return jax.jit(lambda: nn.unbox(model.init(
      jax.random.PRNGKey(0), inputs['pixels'][:1], inputs['tokens'][:1]))['params'])()


def embeddings(model, params, inputs):
  encode = jax.jit(lambda p, x, t: (
      model.apply({'params': p}, x, method=clip.CLIP.encode_image),
      model.apply({'params': p}, t, method=clip.CLIP.encode_text)))
  return tuple(np.asarray(z) for z in encode(params, inputs['pixels'], inputs['tokens']))


@pytest.mark.parametrize('form', ['epoch_1.pt', 'hf'])
def test_open_clip_checkpoints_load_and_embed_as_open_clip(open_clip_b16, form):
  out, config, inputs, want = open_clip_b16
  model = clip.from_config(config)
  params = pretrained.load_pretrained_params(str(out / form), init_params(model, inputs))
  images, texts = embeddings(model, params, inputs)
  np.testing.assert_allclose(images, want['images'], atol=2e-4, rtol=0)
  np.testing.assert_allclose(texts, want['texts'], atol=2e-4, rtol=0)


# --- this project's checkpoints, exported ----------------------------------------------------

@pytest.fixture(scope='module')
def open_clip_run(demo_dir, tmp_path_factory):
  """A micro open_clip-family model trained here on the demo data (configs/tiny_openclip.py)."""
  workdir = tmp_path_factory.mktemp('open_clip_run')
  result = subprocess.run(main_command(workdir, demo_dir, '--config.total_steps=30',
                                       config_file='configs/tiny_openclip.py'),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def micro_inputs(config, count=3):
  rng = np.random.default_rng(2)
  size = config.image_size
  return {'pixels': rng.standard_normal((count, size, size, 3)).astype(np.float32),
          'tokens': np.asarray(tokenizer_lib.from_config(config)(
              ['a red circle on teal', 'two small crosses', HARD_CAPTIONS[6]][:count]))}


def open_clip_embeddings(export_dirs, inputs, tmp_path):
  """open_clip's embeddings of `inputs` by each exported model, in one process."""
  np.savez(tmp_path / 'inputs.npz', **inputs)
  outs = [tmp_path / f'embeddings_{i}.npz' for i in range(len(export_dirs))]
  reference('embed', '--model', *[f'local-dir:{d}' for d in export_dirs],
            f'--inputs={tmp_path / "inputs.npz"}', '--out', *outs)
  return [np.load(out) for out in outs]


def test_a_run_exported_opens_in_open_clip_with_the_same_embeddings(open_clip_run, tmp_path):
  export_dir = tmp_path / 'export'
  result = subprocess.run([sys.executable, '-m', 'tools.export_open_clip',
                           f'--checkpoint={open_clip_run}', f'--out={export_dir}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(export_dir / 'open_clip_config.json') as f:
    written = json.load(f)
  assert written['preprocess_cfg']['mean'] == list(presets.OPENAI_MEAN)
  assert written['model_cfg']['text_cfg']['context_length'] == 16
  config = export_open_clip.run_config_of(checkpoints.latest_step_dir(str(open_clip_run)))
  model = clip.from_config(config)
  inputs = micro_inputs(config)
  params = pretrained.load_pretrained_params(str(open_clip_run), init_params(model, inputs))
  want, = open_clip_embeddings([export_dir], inputs, tmp_path)
  images, texts = embeddings(model, params, inputs)
  np.testing.assert_allclose(images, want['images'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(texts, want['texts'], atol=1e-4, rtol=0)
  # The export read back here is the same model.
  again = pretrained.load_pretrained_params(str(export_dir), init_params(model, inputs))
  np.testing.assert_allclose(embeddings(model, again, inputs)[0], images, atol=1e-6)


@pytest.fixture(scope='module')
def micro_export(open_clip_run, tmp_path_factory):
  """The micro run exported, its config and a model and inputs of that config."""
  out = tmp_path_factory.mktemp('micro_export')
  export_open_clip.export(str(open_clip_run), str(out))
  config = export_open_clip.run_config_of(checkpoints.latest_step_dir(str(open_clip_run)))
  return out, config


def test_loading_refuses_what_does_not_fit_and_names_it(micro_export, tmp_path, monkeypatch):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  out, config = micro_export
  state = open_clip_state.read_state_dict(str(out))
  inputs = micro_inputs(config)
  params = init_params(clip.from_config(config), inputs)
  save_file(dict(state, **{'visual.head.weight': np.zeros((2, 2), np.float32)}),
            str(tmp_path / 'extra.safetensors'))
  with pytest.raises(ValueError, match=r'visual\.head\.weight'):
    pretrained.load_pretrained_params(str(tmp_path / 'extra.safetensors'), params)
  save_file({k: v for k, v in state.items() if k != 'ln_final.bias'},
            str(tmp_path / 'missing.safetensors'))
  with pytest.raises(ValueError, match=r"missing \['text/encoder/norm_out/bias'\]"):
    pretrained.load_pretrained_params(str(tmp_path / 'missing.safetensors'), params)
  narrow = config.copy_and_resolve_references()
  narrow.model.clr.proj_dim_out = 8
  with pytest.raises(ValueError, match=r'image/projection/kernel has shape \(32, 16\) in the '
                     r'checkpoint but \(32, 8\)'):
    pretrained.load_pretrained_params(str(out), init_params(clip.from_config(narrow), inputs))
  # A training checkpoint as open_clip writes it: DDP's prefixes, optimiser state beside.
  torch.save({'epoch': 3, 'name': 'run', 'optimizer': {'state': {}, 'param_groups': []},
              'state_dict': {f'module.{k}': torch.from_numpy(v) for k, v in state.items()}},
             tmp_path / 'epoch_3.pt')
  loaded = pretrained.load_pretrained_params(str(tmp_path / 'epoch_3.pt'), params)
  np.testing.assert_array_equal(loaded['logit_scale'], state['logit_scale'])
  # A pickle that holds more than tensors is not run, and says so in one line.
  with open(tmp_path / 'code.pt', 'wb') as f:
    pickle.dump({'state_dict': {}, 'hook': ValueError('ran')}, f)
  with pytest.raises(ValueError, match='weights_only'):
    pretrained.load_pretrained_params(str(tmp_path / 'code.pt'), params)
  # Without torch, a .pt says how to install it; a .safetensors needs no torch.
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ValueError, match='pip install torch'):
    pretrained.load_pretrained_params(str(tmp_path / 'epoch_3.pt'), params)
  pretrained.load_pretrained_params(str(out / open_clip_state.SAFETENSORS_FILE), params)


def test_damaged_or_ambiguous_files_and_blocks_of_other_shapes_are_named(micro_export,
                                                                        tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from foreign_weights import layout  # pylint: disable=g-import-not-at-top
  out, config = micro_export
  state = open_clip_state.read_state_dict(str(out))
  params = init_params(clip.from_config(config), micro_inputs(config))
  whole = (out / open_clip_state.SAFETENSORS_FILE).read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match=r'cut.safetensors is not a readable safetensors file '
                                       r'\(SafetensorError: .*copy it again'):
    pretrained.load_pretrained_params(str(tmp_path / 'cut.safetensors'), params)
  save_file(dict(state, **{'module.logit_scale': state['logit_scale'] * 2}),
            str(tmp_path / 'both.safetensors'))
  with pytest.raises(ValueError, match=r"'logit_scale' and 'module.logit_scale' are both "
                                       r"'logit_scale'"):
    pretrained.load_pretrained_params(str(tmp_path / 'both.safetensors'), params)
  with pytest.raises(ValueError, match=r'image/encoder/blocks/mlp/kernel: the blocks\' tensors '
                                       r'differ in shape.*\{0: \(2, 3\), 1: \(2, 4\)\}'):
    layout.stack_blocks({'image/encoder/block_00/mlp/kernel': np.zeros((2, 3)),
                         'image/encoder/block_01/mlp/kernel': np.zeros((2, 4))})


@pytest.mark.parametrize('cls_token, sep_token', [(False, False), (True, True), (True, False)])
def test_wordpiece_through_hugging_faces_tokenizers_gives_the_same_ids(cls_token, sep_token):
  ours = tokenizer_lib.BertTokenizer(16, cls_token, sep_token)
  theirs = ours.hugging_face()
  theirs.enable_truncation(16)
  theirs.enable_padding(length=16, pad_id=0)
  np.testing.assert_array_equal(np.asarray(ours(WORDPIECE_CAPTIONS)),
                                [e.ids for e in theirs.encode_batch(WORDPIECE_CAPTIONS)])


def test_an_export_of_flips_text_tower_carries_the_tokenizer_it_trained_with(demo_dir,
                                                                            tmp_path):
  config = flip_family(demo_dir)
  config.aug.txt.cls_token = False  # FLIP's own ids: word pieces alone
  params = init_params(clip.from_config(config), micro_inputs(micro_config(demo_dir)))
  open_clip_state.export(params, config, str(tmp_path / 'flip'))
  # open_clip's HFTokenizer first mends text with ftfy and unescapes HTML, as no WordPiece
  # run of FLIP's or this project's did: captions that those change are left out.
  import ftfy  # pylint: disable=g-import-not-at-top
  import html  # pylint: disable=g-import-not-at-top
  captions = [c for c in WORDPIECE_CAPTIONS
              if html.unescape(html.unescape(ftfy.fix_text(c))) == c]
  assert len(captions) >= 15
  ids = open_clip_ids(tmp_path, captions, model=f'local-dir:{tmp_path / "flip"}')
  np.testing.assert_array_equal(ids, np.asarray(tokenizer_lib.from_config(config)(captions)))
  with open(tmp_path / 'flip' / open_clip_state.CONFIG_FILE) as f:
    text_cfg = json.load(f)['model_cfg']['text_cfg']
  assert text_cfg['hf_tokenizer_name'] != 'bert-base-uncased'  # its ids have no [CLS]/[SEP]


def _contents(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_export_replaces_its_folder_whole_and_alone(open_clip_run, tmp_path, monkeypatch):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'export'
  export_open_clip.export(str(open_clip_run), str(out))
  (out / 'README.md').write_text('a model card of the user\'s')
  before = _contents(out)
  # A second export to the folder while one writes it is refused at once.
  with whole_folder.exclusive(str(out)):
    with pytest.raises(whole_folder.FolderBusy, match='another process is writing'):
      export_open_clip.export(str(open_clip_run), str(out))
  # Killed halfway through the weights: the previous export is as it was.
  killed = subprocess.run([sys.executable, '-c', f"""
import os, signal
import safetensors.numpy
def killed_halfway(state, path, metadata=None):
  open(path, 'wb').write(b'half a file')
  os.kill(os.getpid(), signal.SIGKILL)
safetensors.numpy.save_file = killed_halfway
from tools import export_open_clip
export_open_clip.export({str(open_clip_run)!r}, {str(out)!r})
"""], cwd=ROOT, capture_output=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert _contents(out) == before
  # A full disk: an error naming the cause, and the previous export as it was.
  def disk_full(state, path, metadata=None):
    raise OSError(28, 'No space left on device', path)
  monkeypatch.setattr(safetensors.numpy, 'save_file', disk_full)
  with pytest.raises(OSError, match='No space left on device'):
    export_open_clip.export(str(open_clip_run), str(out))
  assert _contents(out) == before
  monkeypatch.undo()
  # The next export goes through, clears what the killed one left, keeps the user's file.
  export_open_clip.export(str(open_clip_run), str(out))
  assert _contents(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['export']
  # A folder of other files is no export and is never replaced.
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep')
  with pytest.raises(FileExistsError, match=r'other files \(notes.txt\) and no '
                                            r'open_clip_config.json'):
    export_open_clip.export(str(open_clip_run), str(tmp_path / 'mine'))
  assert _contents(tmp_path / 'mine') == {'notes.txt': b'keep'}


def test_an_export_is_of_the_model_its_checkpoint_trained(open_clip_run, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  shutil.copytree(open_clip_run, run)
  # config.json edited after training (another model): the checkpoint's own config wins.
  saved = json.loads((run / 'config.json').read_text())
  saved['model']['activation'], saved['model']['norm_eps'] = 'quick_gelu', 1e-6
  (run / 'config.json').write_text(json.dumps(saved))
  export_open_clip.export(str(run), str(tmp_path / 'out'))
  model_cfg = json.loads((tmp_path / 'out' / open_clip_state.CONFIG_FILE).read_text())[
      'model_cfg']
  assert 'quick_gelu' not in model_cfg and 'norm_kwargs' not in model_cfg['vision_cfg']
  # Weights holding a NaN are not exported, and the tensor is named.
  step_dir = checkpoints.latest_step_dir(str(run))
  params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'params'))
  params['text']['projection']['kernel'] = np.asarray(
      params['text']['projection']['kernel']).copy()
  params['text']['projection']['kernel'][0, 0] = np.nan
  with ocp.StandardCheckpointer() as writer:
    writer.save(str(run / 'checkpoints' / '999' / 'params'), params)
  with pytest.raises(ValueError, match=r'NaN or infinite values in 1 tensors, '
                                       r'text/projection/kernel first'):
    export_open_clip.export(str(run / 'checkpoints' / '999'), str(tmp_path / 'nan'))
  assert not (tmp_path / 'nan').exists()


def test_an_open_clip_folders_own_config_is_honoured_or_refused(micro_export, tmp_path,
                                                                caplog):
  out, config = micro_export
  pretrained.check_pretrained(str(out), config)  # the model it describes
  folder = tmp_path / 'other'
  shutil.copytree(out, folder)
  described = json.loads((folder / open_clip_state.CONFIG_FILE).read_text())
  described['model_cfg']['quick_gelu'] = True
  described['preprocess_cfg']['mean'] = [0.5, 0.5, 0.5]
  (folder / open_clip_state.CONFIG_FILE).write_text(json.dumps(described))
  with pytest.raises(ValueError) as refused:
    pretrained.check_pretrained(str(folder), config)
  assert 'quick_gelu: True there, False here (config.model.activation)' in str(refused.value)
  assert 'preprocess_cfg.mean: [0.5, 0.5, 0.5] there' in str(refused.value)
  assert 'config.aug.pixel_mean' in str(refused.value)
  # Asked for: the weights go into this config's model, and the log says how it differs.
  accepting = config.copy_and_resolve_references()
  accepting.accept_config_changes = True
  pretrained.check_pretrained(str(folder), accepting)
  assert 'quick_gelu: True there' in caplog.text
  # An option this project does not have is named as such.
  described = json.loads((out / open_clip_state.CONFIG_FILE).read_text())
  described['model_cfg']['vision_cfg']['attentional_pool'] = True
  (folder / open_clip_state.CONFIG_FILE).write_text(json.dumps(described))
  with pytest.raises(ValueError, match=r'vision_cfg.attentional_pool: True there, False here '
                                       r'\(this project has no such option\)'):
    pretrained.check_pretrained(str(folder), config)


def test_position_tables_are_resampled_onto_another_grid(micro_export):
  out, config = micro_export
  config = config.copy_and_resolve_references()
  config.image_size = 48  # a 6 x 6 grid instead of 4 x 4
  params = pretrained.load_pretrained_params(
      str(out), init_params(clip.from_config(config), micro_inputs(config)))
  table = np.asarray(params['image']['pos_embedding'])
  original = open_clip_state.read_state_dict(str(out))['visual.positional_embedding']
  assert table.shape == (1, 37, 32)
  np.testing.assert_array_equal(table[0, 0], original[0])  # the class token's row is kept


def flip_family(demo_dir, **overrides):
  """A micro FLIP-tower config: sin-cos positions, patch bias, tanh GELU, epsilon 1e-6,
  first-token text pooling without a causal mask."""
  config = micro_config(demo_dir, **{'model.model_txt.mask_padding': False,
                                     'model.clr.img_avg_with_cls': False, **overrides})
  config.aug.txt.cls_token = True
  return config


def test_flip_towers_export_what_open_clip_expresses(demo_dir, tmp_path):
  inputs = micro_inputs(micro_config(demo_dir))
  models, exports = [], []
  for pooling in ('mean_patches', 'cls'):
    config = flip_family(demo_dir, **{'model.clr.img_avg_token': pooling == 'mean_patches'})
    model = clip.from_config(config)
    # Non-zero biases and gains, so that folding the patch bias into the table is checked.
    params = jax.tree.map(lambda p: p + 0.05 * np.random.default_rng(3).standard_normal(
        p.shape).astype(np.float32), init_params(model, inputs))
    open_clip_state.export(params, config, str(tmp_path / pooling))
    models.append((model, params))
    exports.append(tmp_path / pooling)
  for (model, params), want in zip(models, open_clip_embeddings(exports, inputs, tmp_path)):
    images, texts = embeddings(model, params, inputs)
    np.testing.assert_allclose(images, want['images'], atol=1e-4, rtol=0)
    np.testing.assert_allclose(texts, want['texts'], atol=1e-4, rtol=0)


@pytest.mark.parametrize('field, value, named', [
    ('model.clr.img_avg_with_cls', True, 'config.model.clr.img_avg_with_cls=True'),
    ('model.model_txt.mask_padding', True, 'config.model.model_txt.mask_padding=True'),
    ('model.clr.txt_avg_token', True, 'config.model.clr.txt_avg_token'),
])
def test_what_open_clip_cannot_express_is_refused_naming_the_field(demo_dir, tmp_path, field,
                                                                   value, named):
  config = flip_family(demo_dir, **{field: value})
  params = init_params(clip.from_config(config), micro_inputs(micro_config(demo_dir)))
  with pytest.raises(open_clip_state.ExportError, match=named.replace('.', r'\.')):
    open_clip_state.export(params, config, str(tmp_path / 'export'))
  assert not (tmp_path / 'export').exists()


def clip_benchmark(export_dir, dataset_root, task, out):
  """CLIP_benchmark's own command line on an export; its metrics."""
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'open_clip_reference.py'), 'clip_benchmark',
       'eval', '--model', f'local-dir:{export_dir}', '--pretrained', 'none',
       '--dataset', f'wds/{os.path.basename(dataset_root)}', '--dataset_root', str(dataset_root),
       '--task', task, '--recall_k', '1', '5', '10', '--batch_size', '16',
       '--num_workers', '0', '--output', str(out)],
      cwd=os.path.dirname(out), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    return json.load(f)['metrics']


def test_clip_benchmark_on_an_export_gives_the_projects_numbers(open_clip_run, micro_export,
                                                                demo_dir, tmp_path):
  export_dir, config = micro_export
  config = config.copy_and_resolve_references()
  config.eval_only, config.resume_dir, config.eval_dataset = True, str(open_clip_run), ''
  config.evals = {
      'retrieval': dict(type='retrieval', dataset=f'wds:{demo_dir / "wds_retrieval"}'),
      'zeroshot': dict(type='zeroshot_classification',
                       dataset=f'wds:{demo_dir / "wds_zeroshot"}')}
  ours = train.train_and_evaluate(config, str(tmp_path / 'eval'))
  retrieval = clip_benchmark(export_dir, demo_dir / 'wds_retrieval', 'zeroshot_retrieval',
                             tmp_path / 'retrieval.json')
  zeroshot = clip_benchmark(export_dir, demo_dir / 'wds_zeroshot', 'zeroshot_classification',
                            tmp_path / 'zeroshot.json')
  # One image or caption ranked otherwise (two JPEG decoders may differ by a grey level)
  # moves a recall or an accuracy by one over the set's size.
  images = ours['retrieval/images']
  assert images == 24 and ours['zeroshot/images'] == 64
  for k in (1, 5, 10):
    for kind in ('image', 'text'):
      name = f'{kind}_retrieval_recall@{k}'
      assert abs(retrieval[name] - ours[f'retrieval/{name}']) <= 1 / images + 1e-6, name
  assert abs(zeroshot['acc1'] - ours['zeroshot/top1']) <= 1 / 64 + 1e-6, (zeroshot, ours)
  assert abs(zeroshot['acc5'] - ours['zeroshot/top5']) <= 1 / 64 + 1e-6, (zeroshot, ours)
  assert abs(zeroshot['mean_per_class_recall'] -
             ours['zeroshot/mean_per_class_recall']) <= 1 / 64 + 1e-6, (zeroshot, ours)


def test_open_clips_optimiser_semantics_give_open_clips_parameters(demo_dir, tmp_path):
  """Three steps of open_clip_train's parameter groups, AdamW, schedule and clamp from the
  same weights and gradients as three of this project's, with open_clip's semantics set."""
  settings = dict(lr=2e-3, warmup=2, total_steps=6, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6,
                  steps=3)
  config = presets.open_clip_towers(micro_config(demo_dir, **{
      'abs_learning_rate': settings['lr'], 'warmup_steps': settings['warmup'],
      'total_steps': settings['total_steps'], 'opt.weight_decay': settings['wd'],
      'opt.b2': settings['beta2'], 'opt.eps': settings['eps'], 'decay_set': 'open_clip',
      'model.clr.logit_scale_clamp': 'after_update', 'model.model_img.sincos': False}))
  model = clip.from_config(config)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), *state_lib.dummy_inputs(config))
                    ['params'])
  # Near its bound, and pushed up: the clamp after each update holds it at log(100).
  params['logit_scale'] = jax.numpy.float32(4.603)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
  grads['logit_scale'] = np.float32(-1.0)
  open_clip_state.export(params, config, str(tmp_path / 'start'))
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(open_clip_state.from_params(grads, config), str(tmp_path / 'grads.safetensors'))
  reference('optimise', '--model', f'local-dir:{tmp_path / "start"}',
            f'--grads={tmp_path / "grads.safetensors"}', f'--settings={json.dumps(settings)}',
            '--out', tmp_path / 'after.safetensors')

  tx = optimizer.make_optimizer(config)
  opt_state = tx.init(params)
  bound = objective_lib.objective_of(config, masking.get_policy(config)).clamp_logit_scale
  for _ in range(settings['steps']):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = step_lib.clamp_logit_scale(optax.apply_updates(params, updates), bound)
  ours = open_clip_state.from_params(params, config)
  theirs = open_clip_state.read_state_dict(str(tmp_path / 'after.safetensors'))
  assert ours.keys() == theirs.keys()
  gaps = {k: float(np.abs(ours[k] - theirs[k]).max()) for k in ours}
  worst = max(gaps, key=gaps.get)
  assert gaps[worst] <= 1e-6, (worst, gaps[worst])
  assert float(theirs['logit_scale']) == pytest.approx(np.log(100), abs=1e-6)
  # The start moved by about three learning rates: the check is not of unchanged weights.
  start = open_clip_state.read_state_dict(
      str(tmp_path / 'start' / 'open_clip_model.safetensors'))
  assert np.abs(theirs['visual.proj'] - start['visual.proj']).max() > 1e-3
