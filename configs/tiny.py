"""The demo: a tiny CLIP on the embedded dataset with 50% random masking, on one CPU.

  python -m input_pipeline.demo_data --out=data/demo
  python main.py --workdir=workdirs/tiny --config=configs/tiny.py
"""

from configs import default
from configs import presets


def get_config():
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
  return config
