"""SigLIP's sigmoid loss: every image-text pair of the batch a binary classification.

  loss = -1/B sum_ij log sigmoid(y_ij (t zimg_i . ztxt_j + b)),  y_ij = 1 if i == j else -1

over the global batch of B pairs, with a learned scale t = exp(logit_scale) and bias b.
No softmax couples the rows, so the sum splits into blocks: over a `data` axis of D devices,
`ring_loss` has each device sum its images against its own text shard, then against each
other device's, passed one step round the ring (jax.lax.ppermute) D - 1 times. No device
forms more than its (B/D) x (B/D) block, and its backward pass goes round the ring again
rather than keeping the shards it saw, so memory per device is O(B/D x embedding) whatever D.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

AXIS = 'data'


def block_loss(zimg, ztxt, logit_scale, bias, positives_on_diagonal):
  """Sum of -log sigmoid(y * logit) over one block of images x texts; a block whose images
  and texts are the same examples has its positives on the diagonal."""
  logits = jnp.exp(logit_scale) * zimg @ ztxt.T + bias
  diagonal = jnp.eye(zimg.shape[0], ztxt.shape[0], dtype=bool) & positives_on_diagonal
  return -jnp.sum(jax.nn.log_sigmoid(jnp.where(diagonal, logits, -logits)))


def sigmoid_loss(zimg, ztxt, logit_scale, bias):
  """The loss over a batch held whole: [B, E] embeddings, pairs on the diagonal."""
  return block_loss(zimg, ztxt, logit_scale, bias, True) / zimg.shape[0]


def _next_device(size):
  return [(i, (i + 1) % size) for i in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_sum(zimg, ztxt, logit_scale, bias, size):
  """This device's images against every device's texts: the sum of their blocks."""
  total = block_loss(zimg, ztxt, logit_scale, bias, True)

  def visit(_, carry):
    texts, total = carry
    texts = jax.lax.ppermute(texts, AXIS, _next_device(size))
    return texts, total + block_loss(zimg, texts, logit_scale, bias, False)

  return jax.lax.fori_loop(1, size, visit, (ztxt, total))[1]


def _ring_sum_forward(zimg, ztxt, logit_scale, bias, size):
  # Only this device's own shards are kept for the backward pass.
  return _ring_sum(zimg, ztxt, logit_scale, bias, size), (zimg, ztxt, logit_scale, bias)


def _ring_sum_backward(size, residuals, cotangent):
  zimg, ztxt, logit_scale, bias = residuals

  def visit(step, carry):
    texts, text_grads, image_grads, scale_grad, bias_grad = carry
    block = lambda i, t, s, b: block_loss(i, t, s, b, step == 0)
    _, pull_back = jax.vjp(block, zimg, texts, logit_scale, bias)
    d_image, d_text, d_scale, d_bias = pull_back(cotangent)
    # A text shard travels with the gradient its visits add up; after `size` steps both are
    # back on the device that owns them.
    texts, text_grads = jax.lax.ppermute((texts, text_grads + d_text), AXIS,
                                         _next_device(size))
    return (texts, text_grads, image_grads + d_image, scale_grad + d_scale,
            bias_grad + d_bias)

  zeros = jax.tree.map(jnp.zeros_like, (ztxt, zimg, logit_scale, bias))
  _, text_grads, image_grads, scale_grad, bias_grad = jax.lax.fori_loop(
      0, size, visit, (ztxt, *zeros))
  return image_grads, text_grads, scale_grad, bias_grad


_ring_sum.defvjp(_ring_sum_forward, _ring_sum_backward)


def ring_loss(zimg, ztxt, logit_scale, bias, mesh):
  """`sigmoid_loss` of global [B, E] embeddings split over `mesh`'s data axis, by blocks
  passed round the ring. `zimg` may carry leading axes (views), each with its own loss."""
  size = mesh.shape[AXIS]
  batch = ztxt.shape[0]
  lead = zimg.ndim - 2

  def per_device(zimg, ztxt, logit_scale, bias):
    # The scale and bias enter as this device's own copies: the sum of their gradients over
    # the devices is the transpose of this cast, which jax inserts.
    logit_scale, bias = jax.lax.pcast((logit_scale, bias), AXIS, to='varying')
    ring = lambda images: _ring_sum(images, ztxt, logit_scale, bias, size)
    for _ in range(lead):
      ring = jax.vmap(ring)
    return jax.lax.psum(ring(zimg), AXIS) / batch

  image_spec = P(*([None] * lead), AXIS)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(image_spec, P(AXIS), P(), P()),
                       out_specs=P())(zimg, ztxt, logit_scale, bias)


def view_losses(zimg, ztxt, logit_scale, bias):
  """The loss of each view's images [V, B, E] against the texts [B, E]: round the data axis
  of the mesh being traced under, or on the whole batch where there is none."""
  mesh = jax.sharding.get_abstract_mesh()
  if AXIS in mesh.axis_names and mesh.shape[AXIS] > 1:
    return ring_loss(zimg, ztxt, logit_scale, bias, mesh)
  return jax.vmap(sigmoid_loss, in_axes=(0, None, None, None))(zimg, ztxt, logit_scale, bias)
