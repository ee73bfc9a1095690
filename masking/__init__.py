"""Masking policies: which image patches the image tower sees.

Every policy is a pure, jittable function with static output shapes; see `registry.py` for
how the train step chooses one from the config.
"""

from masking.attentive import attentive_keep, attentive_num_keep
from masking.cluster import calibrate_threshold, cluster_keep, cluster_mask
from masking.gaussian import centre_density, gaussian_keep
from masking.random import random_keep
from masking.registry import MaskingPolicy, POLICIES, describe, get_policy, grid_of, num_keep

__all__ = ['attentive_keep', 'attentive_num_keep', 'calibrate_threshold', 'centre_density',
           'cluster_keep', 'cluster_mask', 'gaussian_keep', 'random_keep', 'MaskingPolicy',
           'POLICIES', 'describe', 'get_policy', 'grid_of', 'num_keep']
