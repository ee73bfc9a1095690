"""FLIP L/16: another name for configs/cfg_flip_large.py, FLIP's own file.

  python main.py --workdir=DIR --config=configs/flip_large16.py --config.laion_path=PATH
"""

from configs.cfg_flip_large import get_config  # pylint: disable=unused-import
