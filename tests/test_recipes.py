"""Each seed's recipe holds its paper's values, and every recipe passes the start-up checks."""

import importlib

import pytest

import masking
from trainer import checks
from trainer import optimizer

OPEN_CLIP_LOOP = {
    'opt.b1': 0.9, 'opt.b2': 0.98, 'opt.eps': 1e-6, 'opt.weight_decay': 0.2,
    'decay_set': 'open_clip', 'model.clr.logit_scale_clamp': 'after_update',
    'aug.crop_ver': 'rrc', 'aug.flip': False, 'model.dtype': 'bfloat16',
    'aug.txt.tokenizer': 'clip_bpe', 'model.model_txt.causal': True,
    'model.model_img.hidden_size': 768, 'model.model_img.patches.size': (16, 16),
    'image_size': 224,
}
GLIP = {**OPEN_CLIP_LOOP, 'samples_per_epoch': 10_968_539, 'num_epochs': 30.0,
        'batch_size': 1280, 'abs_learning_rate': 1e-3, 'warmup_steps': 10_000,
        'aug.area_range': (0.5, 1.0)}
GLIP_TUNING = {**OPEN_CLIP_LOOP, 'abs_learning_rate': 1e-5, 'batch_size': 640,
               'num_epochs': 1.0, 'model.model_img.mask_ratio': 0.0}

CLIPF = {**GLIP, 'batch_size': 3584, 'model.model_img.mask_ratio': 0.75,
         'model.model_txt.masking.policy': 'frequency', 'model.model_txt.masking.num_tokens': 8,
         'model.model_txt.masking.frequency_threshold': 1e-6}
CLIPA = {'image_size': 112, 'samples_per_epoch': 400_000_000, 'num_epochs': 7.0,
         'batch_size': 32768, 'abs_learning_rate': 1.024e-3, 'warmup_steps': 1600,
         'opt.b1': 0.9, 'opt.b2': 0.95, 'opt.weight_decay': 0.2, 'decay_set': 'kernels',
         'aug.area_range': (0.4, 1.0), 'aug.flip': False, 'model.clr.img_avg_token': False,
         'model.model_img.hidden_size': 768, 'model.model_txt.hidden_size': 768,
         'model.clr.proj_dim_out': 512, 'aug.txt.tokenizer': 'tf_bert',
         'aug.txt.cls_token': True, 'aug.txt.max_len': 32,
         'model.model_txt.masking.policy': 'syntax', 'model.model_txt.masking.num_tokens': 8}

RECIPES = {
    # (file, variant): (expected values, policy, patches encoded)
    ('glip_base16', None): ({**GLIP, 'model.model_img.mask_ratio': 0.5,
                             'model.model_img.masking.sigma': 0.2}, 'gaussian', 98),
    ('glip_base16', '0.75'): ({**GLIP, 'model.model_img.mask_ratio': 0.75}, 'gaussian', 49),
    ('glip_base16', '0.918'): ({**GLIP, 'model.model_img.mask_ratio': 0.918}, 'gaussian', 16),
    ('glip_base16', 'tune'): (GLIP_TUNING, 'none', 196),
    ('glip_flip_base16', None): ({**GLIP, 'model.model_img.mask_ratio': 0.5}, 'random', 98),
    ('glip_flip_base16', '0.918'): ({**GLIP, 'model.model_img.mask_ratio': 0.918}, 'random',
                                    16),
    ('glip_flip_base16', 'tune'): (GLIP_TUNING, 'none', 196),
    ('reclip_base16', '160'): ({**GLIP, 'image_size': 160}, 'none', 100),
    ('reclip_base16', '112'): ({**GLIP, 'image_size': 112}, 'none', 49),
    ('reclip_base16', '64'): ({**GLIP, 'image_size': 64}, 'none', 16),
    ('reclip_base16', 'tune'): ({**GLIP_TUNING, 'image_size': 224}, 'none', 196),
    ('clipf_base16', None): (CLIPF, 'random', 49),
    ('clipf_base16', '4'): ({**CLIPF, 'model.model_txt.masking.num_tokens': 4}, 'random', 49),
    ('clipf_base16', 'tune'): ({**GLIP_TUNING, 'warmup_epochs': 0.1,
                                'model.model_txt.masking.policy': 'none'}, 'none', 196),
    ('clipa_base16', None): (CLIPA, 'none', 49),
    ('clipa_base16', 'block'): ({**CLIPA, 'model.model_txt.masking.policy': 'block'}, 'none',
                                49),
    ('clipa_base16', 'tune'): ({**CLIPA, 'image_size': 224, 'total_steps': 4000,
                                'abs_learning_rate': 1.024e-4, 'warmup_steps': 800,
                                'model.model_txt.masking.policy': 'none'}, 'none', 196),
    ('cluster_base16', None): ({
        **OPEN_CLIP_LOOP, 'samples_per_epoch': 10_968_539, 'num_epochs': 32.0,
        'batch_size': 2048, 'abs_learning_rate': 5e-4, 'warmup_steps': 2_000,
        'aug.area_range': (0.9, 1.0), 'seed_jax': 0, 'seed_tf': 0,
        'model.model_img.masking.anchor_ratio': 0.03,
        'model.model_img.masking.target_mask_ratio': 0.5,
        'model.model_img.masking.min_mask_ratio': 0.3,
        'model.model_img.masking.calibrate': True}, 'cluster', 137),
    ('aclip_base16', None): ({
        'num_epochs': 25.0, 'batch_size': 4096, 'abs_learning_rate': 5e-4,
        'warmup_epochs': 1.0, 'warmup_abs_lr': 1e-6, 'min_abs_lr': 1e-5, 'opt.b1': 0.9,
        'opt.b2': 0.98, 'opt.eps': 1e-8, 'opt.weight_decay': 0.5, 'decay_set': 'aclip',
        'model.clr.logit_scale_clamp': 'after_update', 'aug.area_range': (0.5, 1.0),
        'aug.flip': False, 'model.model_img.patch_bias': True,
        'model.model_img.pre_norm': False, 'model.model_img.freeze_patch_embedding': True,
        'aug.pixel_mean': (0.485, 0.456, 0.406), 'aug.txt.tokenizer': 'clip_bpe',
        'model.model_img.masking.num_views': 2,
        'model.model_img.masking.view_crops': 'separate',
        'model.model_img.masking.ema_momentum': 0.996, 'model.aclip.distill_weight': 2.0,
        'model.aclip.simclr_weight': 1.0, 'model.aclip.simclr_temperature': 0.1,
        'model.aclip.head_dim': 256}, 'attentive', 100),
}


def _get(config, dotted):
  for key in dotted.split('.'):
    config = config[key]
  return tuple(config) if isinstance(config, (list, tuple)) else config


def load(name, variant):
  module = importlib.import_module(f'configs.{name}')
  return module.get_config(variant) if variant else module.get_config()


@pytest.mark.parametrize('name,variant', sorted(RECIPES, key=str))
def test_recipe_holds_its_papers_values(name, variant):
  expected, policy_name, patches = RECIPES[(name, variant)]
  config = load(name, variant)
  wrong = {k: (_get(config, k), v) for k, v in expected.items() if _get(config, k) != v}
  assert not wrong, wrong
  config.laion_path = 'unused'
  checks.check(config)
  policy = masking.get_policy(config)
  assert (policy.name, policy.num_keep) == (policy_name, patches)


def test_recipe_step_counts_are_the_papers():
  assert optimizer.total_steps(load('glip_base16', None)) == 30 * (10_968_539 // 1280)
  assert optimizer.total_steps(load('cluster_base16', None)) == 32 * (10_968_539 // 2048)
  tuning = load('glip_base16', 'tune')
  assert optimizer.total_steps(tuning) == 10_968_539 // 640
  assert optimizer.warmup_steps(tuning) == 0


@pytest.mark.parametrize('name', ['glip_base16', 'glip_flip_base16', 'reclip_base16',
                                  'clipf_base16', 'clipa_base16'])
def test_an_unknown_variant_is_refused_naming_the_file(name):
  with pytest.raises(ValueError, match=f'configs/{name}.py:0.6'):
    load(name, '0.6')
