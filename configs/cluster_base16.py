"""Masking Clusters: open_clip's ViT-B-16 (the paper's model) dropping clusters of similar
patches, as the paper trained it.

  python main.py --workdir=DIR --config=configs/cluster_base16.py --config.laion_path=CC12M

The paper's command: CC12M (10,968,539 pairs), 32 epochs, global batch 2,048, learning rate
5e-4 (absolute), warmup 2,000 steps, seed 0, open_clip's training loop (AdamW (0.9, 0.98),
eps 1e-6, weight decay 0.2 on open_clip's set, logit_scale clamped after each update,
mixed precision, open_clip's RandomResizedCrop scale 0.9-1.0 without flip). Anchors are 3%
of the patches (6 of 196); the similarity threshold is calibrated on the first batch to mask
half the patches on average; the encoder sees 137 tokens (min_mask_ratio 0.3), the unused
ones as key padding.

Deviations: steps per epoch are floor(10,968,539 / 2,048) = 5,355 (open_clip's CSV loader
drops the last partial batch too); bfloat16 where open_clip uses float16 with a loss scaler;
the threshold is calibrated once, on the first batch, rather than per batch.
"""

from configs import default
from configs import presets


def get_config():
  config = default.get_config()
  presets.set_size(config, 'ViT-B-16')
  presets.open_clip_towers(config)
  presets.open_clip_training(config, learning_rate=5e-4, warmup_steps=2_000)
  config.samples_per_epoch = presets.CC12M_SAMPLES
  config.num_epochs = 32.0
  config.batch_size = 2048
  config.seed_jax = config.seed_tf = 0
  config.eval_templates = 'openai80'
  config.model.model_img.mask_ratio = 0.5
  masking = config.model.model_img.masking
  masking.policy = 'cluster'
  masking.anchor_ratio = 0.03
  masking.threshold = 0.5
  masking.calibrate = True
  masking.target_mask_ratio = 0.5
  masking.min_mask_ratio = 0.3
  return config
