"""Zero-shot image-text retrieval, with CLIP_benchmark's recall@K."""

from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from evaluators import common
from input_pipeline import eval_data


def recall_at_k(image_emb, text_emb, text_image_index, ks: Sequence[int] = (1, 5, 10)
                ) -> Dict[str, float]:
  """Recall@K of L2-normalised embeddings image_emb [I, E] and text_emb [T, E], where
  text_image_index [T] is the image of each caption.

  image_retrieval_recall@K (text to image): the share of captions whose image is among
  their K most similar images. text_retrieval_recall@K (image to text): the share of images
  with any of their captions among their K most similar captions. Ties are broken as
  lax.top_k breaks them (the lower index first).
  """
  image_emb, text_emb = jnp.asarray(image_emb), jnp.asarray(text_emb)
  text_image_index = jnp.asarray(text_image_index)
  scores = text_emb @ image_emb.T  # [T, I]
  num_images = image_emb.shape[0]
  out = {}
  for k in ks:
    top_images = jax.lax.top_k(scores, min(k, num_images))[1]  # [T, k]
    found = jnp.any(top_images == text_image_index[:, None], axis=1)
    out[f'image_retrieval_recall@{k}'] = float(found.mean())
    top_texts = jax.lax.top_k(scores.T, min(k, text_emb.shape[0]))[1]  # [I, k]
    owners = text_image_index[top_texts]
    found = jnp.any(owners == jnp.arange(num_images)[:, None], axis=1)
    out[f'text_retrieval_recall@{k}'] = float(found.mean())
  return out


class Retrieval:

  def __init__(self, ecfg, config, towers: common.Towers):
    self.towers, self.ks = towers, tuple(ecfg.recall_k)
    self.data = eval_data.retrieval_images(ecfg,
                                           **common.images_kwargs(config, ecfg, towers.batch_size))

  def __call__(self, state, rng) -> Dict[str, float]:
    images, _, skipped = self.towers.images(state, self.data, rng)
    texts = self.towers.texts(state.params, self.data.captions)
    metrics = recall_at_k(images, texts, self.data.caption_image, self.ks)
    metrics.update(images=float(len(images)), captions=float(len(texts)),
                   skipped_images=float(skipped))
    return metrics
