"""FLIP H/14: another name for configs/cfg_flip_huge14.py, FLIP's own file.

  python main.py --workdir=DIR --config=configs/flip_huge14.py --config.laion_path=PATH
"""

from configs.cfg_flip_huge14 import get_config  # pylint: disable=unused-import
