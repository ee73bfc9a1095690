"""What a train step computes besides the image-text loss: views, the EMA teacher, A-CLIP's
auxiliary losses, micro-batches and the logit-scale clamp. Static under jit."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from trainer import optimizer


@dataclasses.dataclass(frozen=True)
class Objective:
  num_views: int = 1
  use_teacher: bool = False  # keep an EMA image tower (attentive scores, distillation)
  ema_momentum: float = 0.996
  total_steps: int = 1
  distill_weight: float = 0.0
  simclr_weight: float = 0.0
  simclr_temperature: float = 0.1
  accum_steps: int = 1  # micro-batches per step (exact contrastive loss, see step.py)
  loss_chunk: int = 0  # rows of the logits matrix formed at a time (0: all)
  loss: str = 'softmax'  # or 'sigmoid' (SigLIP's)
  # > 0: logit_scale is clamped to [0, this] after each update (open_clip's semantics).
  clamp_logit_scale: float = 0.0

  def momentum(self, step):
    """Cosine schedule of the EMA momentum from ema_momentum at step 0 to 1 at the end."""
    progress = jnp.minimum(step / self.total_steps, 1.0)
    return 1 - (1 - self.ema_momentum) * (jnp.cos(jnp.pi * progress) + 1) / 2


def objective_of(config, policy) -> Objective:
  aclip = config.model.aclip
  return Objective(
      num_views=config.model.model_img.masking.num_views,
      use_teacher=policy.needs_scores or aclip.distill_weight > 0,
      ema_momentum=config.model.model_img.masking.ema_momentum,
      total_steps=optimizer.total_steps(config), distill_weight=aclip.distill_weight,
      simclr_weight=aclip.simclr_weight, simclr_temperature=aclip.simclr_temperature,
      accum_steps=config.grad_accum_steps, loss_chunk=config.model.clr.loss_chunk,
      loss=config.model.loss,
      clamp_logit_scale=(float(np.log(config.model.clr.max_logit_scale))
                         if config.model.clr.logit_scale_clamp == 'after_update' and
                         config.model.clr.tau_learnable else 0.0))
