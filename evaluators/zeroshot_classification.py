"""Zero-shot classification: class embeddings from prompt ensembles, images scored by
cosine similarity; top-1, top-5 and mean per-class recall, as CLIP_benchmark reports."""

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from evaluators import common
from input_pipeline import eval_data
from models import clip


def classification_metrics(logits, labels, num_classes: int) -> Dict[str, float]:
  """top1, topK (K = min(5, classes): named for what it is) and mean_per_class_recall (the
  mean over the classes present of their top-1 recall) of logits [N, C]."""
  k = min(5, num_classes)
  predicted = np.asarray(jax.lax.top_k(jnp.asarray(logits), k)[1])
  hits = predicted == labels[:, None]
  top1 = hits[:, 0]
  per_class = [top1[labels == c].mean() for c in np.unique(labels)]
  return {'top1': float(top1.mean()), f'top{k}': float(hits.any(axis=1).mean()),
          'mean_per_class_recall': float(np.mean(per_class))}


class ZeroShotClassification:

  def __init__(self, ecfg, config, towers: common.Towers):
    self.towers = towers
    self.data = eval_data.classification_images(
        ecfg, **common.images_kwargs(config, ecfg, towers.batch_size))
    if ecfg.templates:
      self.templates = eval_data.templates(ecfg.templates,
                                           ecfg.field.replace('dataset', 'templates'))
    else:  # what a wds: set brings, else FLIP's seven
      self.templates = self.data.templates or eval_data.templates('short7')

  def classifier(self, params) -> np.ndarray:
    """[C, E]: each class's prompt embeddings, normalised, averaged, normalised."""
    names = self.data.classnames
    ztxt = self.towers.texts(params, eval_data.prompts(names, self.templates))
    ztxt = jnp.asarray(ztxt.reshape(len(names), len(self.templates), -1))
    return np.asarray(clip.l2_normalize(clip.l2_normalize(ztxt).mean(axis=1)))

  def __call__(self, state, rng) -> Dict[str, float]:
    embeddings, labels, skipped = self.towers.images(state, self.data, rng)
    metrics = classification_metrics(embeddings @ self.classifier(state.params).T, labels,
                                      len(self.data.classnames))
    metrics.update(images=float(len(labels)), skipped_images=float(skipped))
    return metrics
