"""This project's train step against open_clip's own, on one accelerator, side by side.

  python -m benchmarks.versus_open_clip --config=configs/openclip_vit_b16.py \
      --batch_size=256 [--ratios=0.0,0.5] [--open_clip=compile,eager] [--before] [--profile]
  # the largest batch at which our unmasked step fits the device, ours alone; then
  # open_clip alone at the batch it printed
  python -m benchmarks.versus_open_clip --config=configs/openclip_vit_b16.py:ViT-L-16 \
      --batch_size=0 --open_clip=
  python -m benchmarks.versus_open_clip --config=configs/openclip_vit_b16.py:ViT-L-16 \
      --batch_size=N --noours --open_clip=compile

Both train the config's architecture (open_clip's own model of that name for ViT-B-16 and
the other sizes of its CLIP family, else the config's towers as open_clip builds them) on
the same synthetic batch. Ours is the step main.py runs, in --dtype (bfloat16 by default),
with random masking at each ratio. open_clip's is its training script's (open_clip_train): AdamW
(0.9, 0.98, eps 1e-6, weight decay 0.2), ClipLoss, autocast to bfloat16, TF32 matmuls, the
logit scale clamped after each step, its model wrapped in `torch.compile` (--torchcompile)
or eager; masking at a ratio is its patch dropout. `--before` also times ours as it was
before the fast path (attention written out, the scan's loop kept). The contenders take
turns over --rounds rounds of --steps steps.

The last line printed is one JSON object (printed once more with the profile): per
contender the images/s as {min, median, max} over the rounds, the ratio to open_clip's at
the same mask ratio (each mode), MFU (model FLOPs per second over the chip's bfloat16
peak; the FLOPs are counted from the architecture, 3x the forward's matmuls and attention
products, and stated per example) and the peak device memory. --profile adds where each of
our steps' time goes (benchmarks/step_profile.py).

`--xla=KEY=VALUE,...` adds our step compiled with those XLA options as another contender
(`ours[KEY=VALUE,...]`), to find which options help on a device; an option this XLA does
not know is reported in its row and the others are timed. `--variant=FIELD=VALUE,...` adds
our step with those config fields (`ours{FIELD=VALUE,...}`), e.g.
`--variant=model.recompute_elementwise=false`.

`--batch_size=0` times every contender at the largest batch (a multiple of 8) at which our
unmasked step, as XLA plans it, fits --memory_gib (by default 90% of what the device
reports, the rest left to the runtime's own buffers), found by compiling it at a few sizes
(trainer/fit.py). Both frameworks keep their memory once they have it, so at that batch the
other one will not fit beside ours in the same process: time it alone, at the batch
printed. An open_clip step that runs out of memory is reported as such and the others are
timed.
"""

import json
import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# open_clip's torch allocator and ours share the device.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from benchmarks import step_profile
from benchmarks.flops import PEAK_TFLOPS, train_flops_per_example
from benchmarks.synthetic import synthetic_batch
from benchmarks.timing import interleaved_seconds, ratio_spread, spread, stepping
from configs import presets
from foreign_weights import open_clip_state
import masking
from trainer import fit
from trainer import partitioning
from trainer import step as step_lib

config_flags.DEFINE_config_file('config', 'configs/openclip_vit_b16.py', 'Config file.')
flags.DEFINE_integer('batch_size', 256, 'Global batch of every contender (0: the largest '
                     'at which our unmasked step fits --memory_gib).')
flags.DEFINE_float('memory_gib', 0.0, 'The memory a batch of 0 is fitted to (0: 90% of what '
                   'the device reports).')
flags.DEFINE_bool('ours', True, 'Time our step (--noours: open_clip\'s alone).')
flags.DEFINE_list('ratios', ['0.0', '0.5'], 'Mask ratios (open_clip: patch dropout).')
flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Our compute dtype.')
flags.DEFINE_list('open_clip', ['compile', 'eager'], 'open_clip modes to time (empty: none).')
flags.DEFINE_string('open_clip_device', 'cuda', 'Where open_clip runs (cpu for a try).')
flags.DEFINE_bool('before', False, 'Also time our step as it was before the fast path.')
flags.DEFINE_multi_string('xla', [], 'Also time our step compiled with these XLA options, '
                          'KEY=VALUE[,KEY=VALUE...], a contender each (repeat the flag).')
flags.DEFINE_multi_string('variant', [], 'Also time our step with these config fields, '
                          'FIELD=VALUE[,FIELD=VALUE...], a contender each (repeat the flag).')
flags.DEFINE_bool('profile', False, 'Also print where our steps\' time goes.')
flags.DEFINE_integer('steps', 10, 'Timed steps per contender and round.')
flags.DEFINE_integer('rounds', 3, 'Rounds in which the contenders take turns.')
flags.DEFINE_float('peak_tflops', 0.0, 'The chip\'s dense bfloat16 peak (0: by its name).')
FLAGS = flags.FLAGS

def open_clip_name(config) -> str:
  """open_clip's name of the config's architecture: one of its own CLIP models, or the
  config's towers registered with open_clip under a name of their own."""
  img, txt = config.model.model_img, config.model.model_txt
  for name, size in presets.OPEN_CLIP_SIZES.items():
    if (size['img'] == (img.hidden_size, img.transformer.num_layers, img.transformer.num_heads)
        and size['txt'] == (txt.hidden_size, txt.transformer.num_layers,
                            txt.transformer.num_heads)
        and size['embed'] == config.model.clr.proj_dim_out
        and tuple(img.patches.size) == (size['patch'],) * 2 and config.image_size == 224):
      return name
  import open_clip  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix='open-clip-config-')
  path = os.path.join(folder, 'mlip-towers.json')
  with open(path, 'w') as f:
    json.dump(open_clip_state.model_config(config), f)
  open_clip.add_model_config(path)
  return 'mlip-towers'


# On a GPU, XLA runs runs of ops as CUDA graphs (command buffers), which a trace shows as
# one event: a profile is taken of a step compiled without them.
PROFILE_OPTIONS = {'gpu': {'xla_gpu_enable_command_buffer': ''}}


def ratio_config(config, ratio: float):
  """`config` with random masking at `ratio` (none at 0)."""
  config = config.copy_and_resolve_references()
  config.model.model_img.mask_ratio = ratio
  config.model.model_img.masking.policy = 'random' if ratio > 0 else 'none'
  return config


def encoded_tokens(config, ratio: float) -> int:
  """The image tokens a step at `ratio` encodes: the kept patches and the class token."""
  return 1 + masking.get_policy(ratio_config(config, ratio), train=True).num_keep


def ours(config, ratio: float, compiler_options=None):
  """(a call of one train step, its compiled executable, the image tokens it encodes)."""
  config = ratio_config(config, ratio)
  mesh = partitioning.make_mesh(config)
  training = step_lib.new_training(config, mesh, jax.random.PRNGKey(0))
  batch, key = synthetic_batch(config, mesh), jax.random.PRNGKey(1)
  compiled = training.step.lower(training.state, batch, key).compile(compiler_options)
  call = stepping(compiled, training.state, batch, key)
  jax.block_until_ready(call())
  return call, compiled, encoded_tokens(config, ratio)


def key_values(text: str, flag: str) -> dict:
  """'KEY=VALUE,...' (XLA's compile options, config fields): true/false, integers, else
  strings."""
  options = {}
  for item in filter(None, text.split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise app.UsageError(f'--{flag}={text!r}: {item!r} is not KEY=VALUE')
    lowered = value.lower()
    options[key.strip()] = (lowered == 'true' if lowered in ('true', 'false') else
                            int(value) if value.lstrip('-').isdigit() else value)
  return options


def profile_of(config, options, ratio: float, timed):
  """Where our step's time goes at `ratio` (`timed`: the call and executable timed; the
  step compiled with `options`)."""
  extra = PROFILE_OPTIONS.get(jax.default_backend())
  call, compiled = timed
  if extra:
    call, compiled, _ = ours(config, ratio, {**options, **extra})
  return step_profile.profile(call, compiled.as_text())


def peak_gib_of(compiled) -> float:
  """The step's peak device memory as XLA planned it: arguments, outputs (less what the
  donated state aliases) and temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes) / 2**30


def largest_batch(config) -> int:
  """The largest batch, a multiple of 8, at which our unmasked step fits --memory_gib."""
  devices = jax.devices()
  limit = (FLAGS.memory_gib * 2**30 if FLAGS.memory_gib else
           0.9 * (fit.device_memory(devices) or 0))
  if not limit:
    raise app.UsageError(f'--batch_size=0 needs --memory_gib: {devices[0].device_kind} '
                         'devices do not say how much memory they have')
  batch = fit.largest_batch(ratio_config(config, 0.0), devices, int(limit))
  if not batch:
    raise app.UsageError(f'not even a batch of 8 fits {limit / 2**30:.1f} GiB')
  return batch


def open_clip_step(config, name: str, ratio: float, compiled: bool, device: str):
  """(a call of open_clip's training step as open_clip_train runs it, its peak GiB); None
  where the device runs out of memory."""
  import gc  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  from open_clip.loss import ClipLoss  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  cuda = device == 'cuda'
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  model = open_clip.create_model(name, force_patch_dropout=ratio).to(device)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2,
                                betas=(0.9, 0.98), eps=1e-6)
  loss_fn = ClipLoss()
  forward = torch.compile(model) if compiled else model
  rng = np.random.RandomState(0)
  size, batch = config.image_size, config.batch_size
  images = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32))
  images = images.to(device)
  tokens = torch.from_numpy(rng.randint(1, config.model.model_txt.vocab_size - 1, size=(
      batch, config.aug.txt.max_len))).to(device)

  def step():
    with torch.autocast(device, dtype=torch.bfloat16):
      out = forward(images, tokens)
      if isinstance(out, dict):
        out = (out['image_features'], out['text_features'], out['logit_scale'])
      loss = loss_fn(*out[:3])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100))
    sync()
    return None

  try:
    for _ in range(3):  # compiles (torch.compile) and settles the allocator
      step()
  except torch.cuda.OutOfMemoryError:
    out_of_memory = True
  else:
    out_of_memory = False
  if out_of_memory:  # out of the handler, whose traceback holds the step's tensors
    del step, forward, optimizer, model
    gc.collect()
    torch.cuda.empty_cache()
    return None, None
  peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
  return step, peak


def main(argv):
  del argv
  config = FLAGS.config
  config.model.dtype = FLAGS.dtype
  config.batch_size = FLAGS.batch_size or largest_batch(config)
  print(json.dumps({'batch_size': config.batch_size}), flush=True)
  name = open_clip_name(config) if FLAGS.open_clip else None
  device = jax.devices()[0].device_kind
  peak_tflops = FLAGS.peak_tflops or next(
      (v for k, v in PEAK_TFLOPS.items() if k.lower() in device.lower()), 0.0)
  calls, memory, flops, compiled, failed = {}, {}, {}, {}, {}
  variants = {}  # name -> (config, XLA options)
  if FLAGS.ours:
    variants['ours'] = (config, {})
    variants.update({f'ours[{text}]': (config, key_values(text, 'xla')) for text in FLAGS.xla})
    variants.update({f'ours{{{text}}}': (fit.with_overrides(config, key_values(text, 'variant')),
                                         {}) for text in FLAGS.variant})
  if FLAGS.before:
    before = config.copy_and_resolve_references()
    before.model.attention, before.model.scan_layers = 'einsum', True
    before.model.scan_unroll = False
    variants['ours_before'] = (before, {})
  for ratio in FLAGS.ratios:
    for variant, (variant_config, options) in variants.items():
      key = f'{variant}@{ratio}'
      try:
        calls[key], compiled[key], tokens = ours(variant_config, float(ratio), options)
      except jax.errors.JaxRuntimeError as e:  # an option this XLA does not know
        if not options:
          raise
        failed[key] = {'error': str(e).splitlines()[0][:300]}
        print(json.dumps({'built': key, **failed[key]}), flush=True)
        continue
      memory[key], flops[key] = peak_gib_of(compiled[key]), train_flops_per_example(
          config, tokens)
      print(json.dumps({'built': key, 'peak_gib': round(memory[key], 2)}), flush=True)
    for mode in FLAGS.open_clip:
      key = f'open_clip_{mode}@{ratio}'
      call, peak = open_clip_step(config, name, float(ratio), mode == 'compile',
                                  FLAGS.open_clip_device)
      print(json.dumps({'built': key, 'peak_gib': peak, 'out_of_memory': call is None}),
            flush=True)
      if call is None:
        failed[key] = {'out_of_memory': True}
        continue
      calls[key], memory[key] = call, peak
      flops[key] = train_flops_per_example(config, encoded_tokens(config, float(ratio)))
  seconds = interleaved_seconds(calls, FLAGS.rounds, FLAGS.steps, warmup=1)
  results = dict(failed)
  for key, values in seconds.items():
    per_second = [config.batch_size / s for s in values]
    row = {'images_per_sec': spread(per_second, 1), 'step_seconds': spread(values),
           'train_gflop_per_example': round(flops[key] / 1e9, 2),
           'peak_memory_gib': None if memory[key] is None else round(memory[key], 2)}
    if peak_tflops:
      row['mfu'] = spread([flops[key] * p / (peak_tflops * 1e12) for p in per_second], 3)
    ratio = key.split('@')[1]
    for mode in FLAGS.open_clip:
      other = f'open_clip_{mode}@{ratio}'
      if not key.startswith('open_clip') and other in seconds:
        row[f'speed_vs_open_clip_{mode}'] = ratio_spread(seconds[other], values)
    results[key] = row
  out = {'device': device, 'peak_tflops': peak_tflops or None, 'architecture': name,
         'batch_size': config.batch_size, 'dtype': FLAGS.dtype,
         'flops_counted': 'per example: 3 x forward (24 width^2 + 4 tokens width per token '
                          'and layer, patch embedding, projections)',
         'jax': jax.__version__, 'results': results}
  print(json.dumps(out), flush=True)  # the timings stand, whatever the profile does
  if FLAGS.profile:
    out['profile'] = {}
    for key in compiled:
      variant, ratio = key.split('@')
      if variant not in ('ours', 'ours_before'):
        continue  # the variants are compared by their time alone
      try:
        out['profile'][key] = profile_of(*variants[variant], float(ratio),
                                         (calls[key], compiled[key]))
      except Exception as e:  # pylint: disable=broad-except  (a profiler the device lacks)
        out['profile'][key] = f'no profile: {type(e).__name__}: {e}'
    print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
