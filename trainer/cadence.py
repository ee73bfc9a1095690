"""The steps at which a run logs, saves, evaluates and draws its pictures.

Periods given in virtual epochs (`save_every_epochs`, `vis_every_epochs`) are rounded to
whole steps; the last step of a run always logs and draws, and saves and evaluates unless
`save_at_end` / `eval_at_end` say otherwise.
"""

import dataclasses

from trainer import optimizer


def _every(period: int, step: int) -> bool:
  return period > 0 and step % period == 0


@dataclasses.dataclass(frozen=True)
class Cadence:
  total_steps: int
  steps_per_epoch: int
  log_every: int
  checkpoint_every: int
  pictures_every: int
  save_at_end: bool = True
  eval_at_end: bool = True
  # FLIP's train.py evaluates after the first virtual epoch and after each epoch whose
  # number vis_every_epochs divides (config.eval_every_vis_epochs).
  eval_every_vis_epochs: bool = False
  vis_every_epochs: float = 0.0

  @classmethod
  def of_config(cls, config) -> 'Cadence':
    per_epoch = optimizer.steps_per_epoch(config)

    def period(epochs):
      return max(1, round(epochs * per_epoch)) if epochs > 0 else 0

    return cls(total_steps=optimizer.total_steps(config), steps_per_epoch=per_epoch,
               log_every=config.log_every_steps,
               checkpoint_every=(config.checkpoint_every_steps
                                 if config.checkpoint_every_steps > 0
                                 else period(config.save_every_epochs)),
               pictures_every=period(config.vis_every_epochs),
               save_at_end=config.save_at_end, eval_at_end=config.eval_at_end,
               eval_every_vis_epochs=config.eval_every_vis_epochs,
               vis_every_epochs=config.vis_every_epochs)

  def is_last(self, step: int) -> bool:
    return step == self.total_steps

  def log_due(self, step: int) -> bool:
    return _every(self.log_every, step) or self.is_last(step)

  def checkpoint_due(self, step: int) -> bool:
    return _every(self.checkpoint_every, step) or (self.is_last(step) and self.save_at_end)

  def pictures_due(self, step: int) -> bool:
    return _every(self.pictures_every, step) or self.is_last(step)

  def evaluation_due(self, step: int, every_steps: int) -> bool:
    """Whether an evaluation run every `every_steps` (0: only at the end) is due."""
    return (_every(every_steps, step) or (self.is_last(step) and self.eval_at_end)
            or self.flip_epoch_end(step))

  def flip_epoch_end(self, step: int) -> bool:
    if not self.eval_every_vis_epochs or step % self.steps_per_epoch:
      return False
    epoch = step // self.steps_per_epoch
    return epoch == 1 or (self.vis_every_epochs > 0 and epoch % self.vis_every_epochs == 0)
