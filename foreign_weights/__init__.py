"""Weights written by other codebases, read into this project's parameters and written out
in their layouts: FLIP's released t5x checkpoints (flip_t5x.py, read) and open_clip's state
dicts (open_clip_state.py, read and written). checkpoints.load_pretrained_params picks the
reader from what a path holds.
"""
