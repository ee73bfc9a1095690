"""The trainer's parts, one module per subject; train.py puts them together into a run.

  state            the train state (with the EMA teacher) and its construction on the mesh
  objective        what a train step computes besides the contrastive loss
  step             one jitted train step: masks, towers, losses, the EMA update
  optimizer        AdamW, its learning-rate schedule and the parameters it decays
  cadence          the steps at which logs, checkpoints, evaluations and pictures fall
  partitioning     the device mesh and how arrays are placed on it
  checkpoints      saving, restoring and keeping checkpoints (orbax)
  pretrained       weights of another run, FLIP or open_clip into a new state
  resume           which checkpoint a run goes on from, and what it carries for that
  checks           start-up checks of a config, each naming its field
  saved_config     the config a run saves beside its checkpoints, and reading it back
  workdir          a run's paths, its lock and files written whole or not at all
  metric_writers   TensorBoard, the log and metrics.jsonl
  log_window       the metrics of the steps since the last log row, summarised
  evaluations      the run's evaluations when due, their rows and the results table
  cluster_calibration  the cluster policy's threshold, set on the first batch
  preemption       SIGTERM and Ctrl-C: finish the step, save, exit
  console          what the console shows; everything else to WORKDIR/train.log
  mask_pictures    pictures of the patches a policy keeps
"""
