"""Masking policies: which image patches the image tower sees.

Every policy is a pure, jittable function with static output shapes; see `registry.py` for
how the train step chooses one from the config.
"""

from masking.random import random_keep
from masking.registry import MaskingPolicy, POLICIES, get_policy, grid_of, num_keep

__all__ = ['random_keep', 'MaskingPolicy', 'POLICIES', 'get_policy', 'grid_of', 'num_keep']
