"""What the pretext tasks share: contrastive losses, projection heads, the task contract.

Contract of a task module (``rotnet``, ``vcop``, ``prp``, ``rspnet``, ``cvrl``, ``tdl``):

* ``spec(pretext_cfg, data_cfg) -> TaskSpec``: how many views of each video the
  input pipeline makes, their frame count, the number of classes (classification
  tasks) and whether the task keeps a momentum encoder and a queue;
* ``Head``: a small ``flax.linen`` module applied to the backbone's pooled
  embeddings of all views, ``(B, V, D)``;
* ``loss(head_out, labels, **kw) -> (loss, metrics)``: a pure function.

The views themselves are sampled in the tf.data pipeline
(:mod:`vkd_jax.data.pretext`), per example and from stateless seeds, so that a
task works multi-device and multi-process like supervised training.

**Global-batch negatives.** The step is ``jax.jit`` over global arrays sharded
along the batch: the similarity matrices below are computed over the *global*
batch, and XLA inserts the all-gather that SimCLR-style losses otherwise do by
hand. ``tests/test_pretext.py`` checks the loss on 4 emulated devices equals the
single-device one.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How a task is fed and scored.

    Attributes:
      name: task name (``rotnet`` ...).
      num_views: clips per video in a batch (``views`` is ``(B, num_views, T, S, S, 3)``).
      num_frames: frames per clip.
      num_classes: classes of the pretext classification (0 for contrastive tasks).
      chance: chance level of the reported pretext accuracy.
      momentum_encoder: keeps an EMA copy of backbone + head and a queue (MoCo-style).
      description: one line for logs and results.
    """

    name: str
    num_views: int
    num_frames: int
    num_classes: int
    chance: float
    momentum_encoder: bool = False
    description: str = ""


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy and accuracy of integer ``labels``."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"pretext_loss": loss, "accuracy": accuracy}


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """SimCLR's NT-Xent (normalized temperature-scaled cross-entropy), Chen et al. 2020.

    For the 2N embeddings ``z = [z1; z2]`` (each l2-normalized), the pair (i, i+N)
    is positive and the other 2N-2 embeddings are negatives:

        l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t),   s = z z^T,

    averaged over all 2N anchors.

    Args:
      z1, z2: ``(N, D)`` embeddings of the two views (any scale; normalized here).
      temperature: t.

    Returns:
      ``(loss, accuracy)``: accuracy = share of anchors whose most similar other
      embedding is their positive.
    """
    n = z1.shape[0]
    z = l2_normalize(jnp.concatenate([z1, z2], 0))
    sim = z @ z.T / temperature
    sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)  # Never one's own positive.
    target = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
    loss = optax.softmax_cross_entropy_with_integer_labels(sim, target).mean()
    accuracy = jnp.mean(jnp.argmax(sim, -1) == target)
    return loss, accuracy


def info_nce(
    query: jax.Array,
    positive: jax.Array,
    negatives: jax.Array,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """InfoNCE with explicit negatives (van den Oord et al. 2018; MoCo, He et al. 2020).

        l = -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.k-_j / t))

    with every vector l2-normalized.

    Args:
      query: ``(N, D)``.
      positive: ``(N, D)``, one positive key per query.
      negatives: ``(K, D)`` keys shared by all queries (a queue), or ``(N, K, D)``
        per-query negatives.
      temperature: t.

    Returns:
      ``(loss, accuracy)``: accuracy = share of queries closest to their positive.
    """
    q, kp, kn = l2_normalize(query), l2_normalize(positive), l2_normalize(negatives)
    pos = jnp.sum(q * kp, -1, keepdims=True)
    neg = q @ kn.T if kn.ndim == 2 else jnp.einsum("nd,nkd->nk", q, kn)
    logits = jnp.concatenate([pos, neg], -1) / temperature
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.zeros(q.shape[0], jnp.int32)
    ).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == 0)
    return loss, accuracy


class ProjectionMLP(nn.Module):
    """Dense-ReLU layers then a linear projection (SimCLR/MoCo v2 heads), float32."""

    hidden_dim: int
    out_dim: int
    num_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        for _ in range(self.num_layers - 1):
            x = nn.relu(nn.Dense(self.hidden_dim)(x))
        return nn.Dense(self.out_dim)(x)


class LinearClassifier(nn.Module):
    """Dropout then a linear classifier on each view's embedding: ``(B, V, D) -> (B, V, C)``."""

    num_classes: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, embeddings: jax.Array, *, train: bool = False) -> jax.Array:
        x = embeddings.astype(jnp.float32)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
