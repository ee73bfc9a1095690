"""FLIP B/16: another name for configs/cfg_flip_base.py, FLIP's own file.

  python main.py --workdir=DIR --config=configs/flip_base16.py --config.laion_path=PATH
"""

from configs.cfg_flip_base import get_config  # pylint: disable=unused-import
