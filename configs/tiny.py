"""The demo: a tiny CLIP on the embedded dataset with 50% random masking, on one CPU.

  python -m input_pipeline.demo_data --out=data/demo
  python main.py --workdir=workdirs/tiny --config=configs/tiny.py
  python main.py --workdir=workdirs/tiny-clipa --config=configs/tiny.py:clipa

Variants (`make demo RECIPE=...`), the recipes' methods at the demo's size:
  clipa   CLIPA's: smaller images (32 pixels, 16 of the 36 patches) instead of masking, and
          the captions cut to 6 tokens by syntax (nouns first)
  clipf   CLIPF's: 75% of the patches masked at random, the captions cut to 6 tokens by
          word frequency
  siglip  SigLIP's sigmoid loss in place of the softmax loss
"""

from configs import default
from configs import presets


VARIANTS = ('clipa', 'clipf', 'siglip')


def get_config(variant: str = ''):
  config = default.get_config()
  presets.set_size(config, 'tiny')
  presets.project_choices(config)  # [CLS]/[SEP], text padding masked, patch pooling
  config.laion_path = 'data/demo/train'
  config.eval_dataset = 'folder:data/demo/zeroshot'
  # Held-out captioned images: harder than the zero-shot classes, which the demo saturates.
  config.evals.retrieval = dict(type='retrieval', dataset='wds:data/demo/wds_retrieval',
                                every_steps=0)
  config.samples_per_epoch = 20000  # the demo set's size
  config.image_size = 48  # 6 x 6 patches of 8 pixels
  config.aug.txt.max_len = 16  # the demo's captions are short
  config.batch_size = 128
  config.eval_batch_size = 128
  config.shuffle_buffer = 2000
  config.learning_rate = 4e-3  # per 256 examples: 2e-3 at batch 128
  config.warmup_epochs = 0.5
  config.num_epochs = 2.0
  config.opt.weight_decay = 0.05
  config.aug.area_range = (0.7, 1.0)
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 200
  config.vis_every_epochs = 1.0
  # Unrolled blocks: XLA fuses across them, faster for 4 small layers on a CPU.
  config.model.scan_layers = False
  config.model.model_img.mask_ratio = 0.5
  config.model.model_img.masking.policy = 'random'
  # Used when the policy is switched to cluster: the demo's flat backgrounds correlate
  # strongly, so a fixed threshold would mask most of each image.
  config.model.model_img.masking.calibrate = True
  if variant and variant not in VARIANTS:
    raise ValueError(f'configs/tiny.py:{variant}: expected one of {VARIANTS}')
  text = config.model.model_txt.masking
  if variant == 'clipa':
    config.image_size = 32
    config.model.model_img.mask_ratio = 0.0
    config.model.model_img.masking.policy = 'none'
    text.policy, text.num_tokens = 'syntax', 6
  elif variant == 'clipf':
    config.model.model_img.mask_ratio = 0.75
    text.policy, text.num_tokens = 'frequency', 6
    # The demo's captions use some 50 words, each far more frequent than any word of CC12M:
    # CLIPF's 1e-6 would discard every one alike.
    text.frequency_threshold = 1e-2
  elif variant == 'siglip':
    config.model.loss = 'sigmoid'
  return config
