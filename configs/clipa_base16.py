"""CLIPA: fewer image and text tokens instead of masking (smaller images, captions cut to a
few tokens), then tuning at full size, on CLIPA's ViT-B/16 and LAION-400M.

  python main.py --workdir=DIR --config=configs/clipa_base16.py --config.laion_path=LAION
  python main.py --workdir=DIR --config=configs/clipa_base16.py:block ...   # or random,
                                                                  # truncation
  python main.py --workdir=TUNED --config=configs/clipa_base16.py:tune \
      --config.pretrain_dir=DIR --config.laion_path=LAION   # 224 pixels, 32 tokens

CLIPA's pre-training of B/16 (UCSC-VLAA/CLIPA at 38005085,
clipa_jax/configs/model_b/112_32_pre_training.py): images of 112 pixels (49 patches of 16),
batch 32,768, 7 epochs of LAION-400M, Adam (0.9, 0.95) with peak learning rate 1.024e-3 after
1,600 warmup steps and a cosine to 0, weight decay 0.2 on the kernels, Inception crops of
40-100% of the area with no flip, sin-cos image positions, class-token image pooling, BERT's
WordPiece with a [CLS] in front, a 768-wide text tower, a 512-wide embedding, temperature
0.07. Its captions are reduced to 8 tokens by syntax (nouns first), as its 8-token
configs do (model_h/84_8_pre_training.py: noun_tokenize); the variants take its other
reductions. Its tuning (model_b/unmask_tuning.py): 224 pixels, 32 tokens, 4,000 steps of
batch 32,768 at peak 1.024e-4 after 800 warmup steps.

Deviations: text pooling reads the [CLS] token where CLIPA's reads the last position;
evaluation reads the prompts whole, where CLIPA's 8-token configs reduce them too; the
parts of speech come from a lexicon, not nltk's tagger (masking/text.py).
"""

from configs import default
from configs import presets

TEXT_POLICIES = ('syntax', 'block', 'random', 'truncation')


def get_config(variant: str = 'syntax'):
  config = default.get_config()
  presets.set_size(config, 'B/16')
  txt = config.model.model_txt
  txt.hidden_size, txt.transformer.num_heads, txt.transformer.mlp_dim = 768, 12, 3072
  config.samples_per_epoch = 400_000_000  # LAION-400M
  config.num_epochs = 7.0
  config.batch_size = 32768
  config.abs_learning_rate = 1.024e-3
  config.warmup_steps = 1600
  config.min_abs_lr = 0.0
  config.opt.b1, config.opt.b2 = 0.9, 0.95
  config.opt.weight_decay = 0.2
  config.decay_set = 'kernels'
  config.aug.area_range = (0.4, 1.0)
  config.aug.flip = False
  config.model.clr.img_avg_token = False  # the class token
  config.aug.txt.cls_token = True
  config.aug.txt.max_len = 32
  config.model.model_img.mask_ratio = 0.0
  config.model.model_img.masking.policy = 'none'
  if variant == 'tune':
    config.total_steps = 4000
    config.abs_learning_rate = 1.024e-4
    config.warmup_steps = 800
    config.model.model_txt.masking.policy = 'none'
    return config
  if variant not in TEXT_POLICIES:
    raise ValueError(f'configs/clipa_base16.py:{variant}: expected a text reduction of '
                     f'{TEXT_POLICIES} or `tune`')
  config.image_size = 112
  config.model.model_txt.masking.policy = variant
  config.model.model_txt.masking.num_tokens = 8
  return config
