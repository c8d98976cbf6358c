"""TDL: temporal discriminative learning (Wang et al., arXiv 2008.02129, 2020).

Following the authors' code (``train_temporal_dis.py --softmax --moco``). Per
video, three clips of ``num_frames`` frames (``data.frame_stride`` apart):

* anchor (view 0): frames from a random start, its own spatial augmentation,
  then the temporal-consistency augmentation: every frame mixed with one random
  static frame of the clip, ``x_t <- (1 - lam) x_t + lam x_j``, ``lam ~ U(0,
  mixup_max)``, which keeps the time derivative up to the factor ``1 - lam``;
* positive (view 1): the *same frames*, another spatial augmentation, through
  the momentum encoder;
* negative (view 2): another time of the same video (a start at least
  ``min_gap`` frames from the anchor's; otherwise shifted by a third of the
  video), through the online encoder (it keeps its gradient, as in the code).

An l2-normalized linear head on the pooled embedding; with a queue of earlier
positives (other videos) and temperature ``T``:

    L = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.m_j / T) + exp(q.n / T))

The triplet term the code computes but does not add is not built. Reported
pretext accuracy: the share of anchors closer to their positive than to their
own video's other time (chance 0.5); ranking above the queue too is logged as
``nce_accuracy``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.pretext import common

QUERY_VIEWS = (0, 2)  # anchor, negative (online encoder)
KEY_VIEWS = (1,)  # positive (momentum encoder)


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    del pretext_cfg
    return common.TaskSpec(
        name="tdl",
        num_views=3,
        num_frames=int(data_cfg.num_frames),
        num_classes=0,
        chance=0.5,
        momentum_encoder=True,
        description="TDL: same frames vs other times of the video vs other videos",
    )


class Head(nn.Module):
    """Linear projection, l2-normalized."""

    dim: int = 128

    @nn.compact
    def __call__(self, embeddings: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        return common.l2_normalize(nn.Dense(self.dim)(embeddings.astype(jnp.float32)))


def head(task: common.TaskSpec, pretext_cfg) -> Head:
    del task
    return Head(dim=int(pretext_cfg.tdl.dim))


def loss(
    query: jax.Array, keys: jax.Array, queue: jax.Array, *, temperature: float
) -> tuple[jax.Array, dict, jax.Array]:
    """TDL's InfoNCE.

    Args:
      query: ``(B, 2, dim)``: anchor and same-video negative (online encoder).
      keys: ``(B, 1, dim)``: the positive (momentum encoder, no gradient).
      queue: ``(K, dim)`` positives of earlier batches.
      temperature: T.

    Returns:
      ``(loss, metrics, enqueue)``; ``enqueue`` are the positives ``(B, dim)``.
    """
    q, n, k = query[:, 0], query[:, 1], keys[:, 0]
    pos = jnp.sum(q * k, -1, keepdims=True)
    own = jnp.sum(q * n, -1, keepdims=True)
    logits = jnp.concatenate([pos, q @ queue.T, own], -1) / temperature
    nce = -jax.nn.log_softmax(logits, -1)[:, 0].mean()
    metrics = {
        "pretext_loss": nce,
        "accuracy": jnp.mean(pos[:, 0] > own[:, 0]),
        "nce_accuracy": jnp.mean(jnp.argmax(logits, -1) == 0),
    }
    return nce, metrics, jax.lax.stop_gradient(k)
