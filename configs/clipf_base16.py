"""CLIPF: captions cut to a few tokens by word frequency, with 75% of the patches masked at
random, on open_clip's ViT-B-16 and CC12M, as CLIPF trained it.

  python main.py --workdir=DIR --config=configs/clipf_base16.py --config.laion_path=CC12M
  python main.py --workdir=DIR --config=configs/clipf_base16.py:16 ...   # 16 text tokens
  python main.py --workdir=TUNED --config=configs/clipf_base16.py:tune \
      --config.pretrain_dir=DIR --config.laion_path=CC12M   # unmasked tuning

CLIPF's command (its README, MingliangLiang3/CLIPF at 5a24b8b1): open_clip's ViT-B-16 on CC12M
(10,968,539 pairs), 30 epochs, batch 896 on each of 4 GPUs (3,584), learning rate 1e-3,
weight decay 0.2, crops of scale 0.5-1.0, 75% of the patches dropped at random (open_clip's
patch dropout, which is random masking), frequency reduction of the captions with CC12M's
word frequencies at threshold 1e-6, and open_clip's defaults for the rest (warmup 10,000
steps, AdamW (0.9, 0.98), eps 1e-6), which are configs/glip_base16.py's. Its table reports
8, 16, 6 and 4 text tokens (39.3% zero-shot at 8 after tuning). Its unmasked tuning: learning
rate 1e-5, batch 640 (160 x 4), one epoch with a tenth of an epoch of warmup, every patch and
every token.

Deviations: frequencies are counted on the first 1,000,000 captions (about a tenth of CC12M,
read at the run's first start and kept in its workdir), of token ids where CLIPF counts
words; a word of several tokens is discarded or kept whole, by its first token's frequency.
The rest as configs/glip_base16.py says.
"""

from configs import default
from configs import presets

TEXT_TOKENS = ('8', '16', '6', '4')


def get_config(variant: str = '8'):
  config = presets.glip_training(default.get_config())
  config.batch_size = 3584
  config.model.model_img.mask_ratio = 0.75
  config.model.model_img.masking.policy = 'random'
  text = config.model.model_txt.masking
  text.policy = 'frequency'
  text.frequency_threshold = 1e-6
  text.frequency_captions = 1_000_000
  if variant == 'tune':
    presets.unmasked_tuning(config, learning_rate=1e-5, batch_size=640, epochs=1.0)
    config.warmup_epochs = 0.1
    return config
  if variant not in TEXT_TOKENS:
    raise ValueError(f'configs/clipf_base16.py:{variant}: expected a number of text tokens '
                     f'of {TEXT_TOKENS} or `tune`')
  text.num_tokens = int(variant)
  return config
