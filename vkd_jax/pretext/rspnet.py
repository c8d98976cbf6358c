"""RSPNet: relative speed perception + appearance-focused video instance discrimination.

Chen et al., AAAI 2021 (arXiv 2011.07949), following the authors' code
(``MoCoDiffLossTwoFc``). Per video, two independent windows of
``max(speeds) * num_frames`` frames, each with its own temporally consistent
augmentation (crop, grayscale, colour jitter, optional flip), give three clips:

* ``q`` (view 0): window 1 at speed ``s``, through the online encoder;
* ``k`` (view 1): window 2 at the same speed ``s``, momentum encoder;
* ``k_neg`` (view 2): window 2 (same augmentation as ``k``) at the other speed,
  momentum encoder.

``s`` is drawn per video between the two speeds (the authors split each batch in
halves: the same in expectation). Two linear heads on the pooled embedding, each
followed by l2-normalization: ``g_m`` for speed, ``g_a`` for appearance. With
temperature ``T`` and a queue of keys of other videos:

* RSP, margin ranking on the speed embeddings (``margin`` on similarities / T):
  ``L_RSP = max(0, margin - (q_m.k_m - q_m.kneg_m) / T)``;
* A-VID, InfoNCE where both clips of the same video are positives (the other
  speed is an augmentation for appearance) and the queue holds the negatives:
  ``L_A = CE([q_a.k_a, q_a.queue] / T, 0) + CE([q_a.kneg_a, q_a.queue] / T, 0)``;
* ``L = avid_weight * L_A + rsp_weight * L_RSP``; the queue enqueues ``kneg_a``.

Reported pretext accuracy: the share of videos whose same-speed clip is closer
in the speed space than the other-speed clip (chance 0.5); the A-VID accuracy
(positive ranked above every queued key) is logged as ``avid_accuracy``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.pretext import common

QUERY_VIEWS = (0,)  # q
KEY_VIEWS = (1, 2)  # k, k_neg (momentum encoder)


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    speeds = tuple(pretext_cfg.rspnet.speeds)
    if len(speeds) != 2 or speeds[0] == speeds[1]:
        raise ValueError(f"pretext.rspnet.speeds must be two different speeds, got {speeds}")
    return common.TaskSpec(
        name="rspnet",
        num_views=3,
        num_frames=int(data_cfg.num_frames),
        num_classes=0,
        chance=0.5,
        momentum_encoder=True,
        description=f"RSPNet: relative speed {speeds} + video instance discrimination",
    )


class Head(nn.Module):
    """The two projections ``g_a`` (appearance) and ``g_m`` (motion/speed), l2-normalized."""

    dim: int = 128

    @nn.compact
    def __call__(self, embeddings: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        del train
        x = embeddings.astype(jnp.float32)
        return {
            "a": common.l2_normalize(nn.Dense(self.dim, name="g_a")(x)),
            "m": common.l2_normalize(nn.Dense(self.dim, name="g_m")(x)),
        }


def head(task: common.TaskSpec, pretext_cfg) -> Head:
    del task
    return Head(dim=int(pretext_cfg.rspnet.dim))


def loss(
    query: dict[str, jax.Array],
    keys: dict[str, jax.Array],
    queue: jax.Array,
    *,
    temperature: float,
    margin: float,
    avid_weight: float = 1.0,
    rsp_weight: float = 1.0,
) -> tuple[jax.Array, dict, jax.Array]:
    """RSPNet's objective.

    Args:
      query: head outputs of ``q``, ``{"a", "m"}`` each ``(B, 1, dim)``.
      keys: head outputs of ``(k, k_neg)``, each ``(B, 2, dim)`` (no gradient).
      queue: ``(K, dim)`` appearance keys of earlier batches.
      temperature: T.
      margin: ranking margin on similarities divided by T.
      avid_weight, rsp_weight: weights of the two terms.

    Returns:
      ``(loss, metrics, enqueue)``: ``enqueue`` are the ``kneg_a`` keys ``(B, dim)``.
    """
    q_a, q_m = query["a"][:, 0], query["m"][:, 0]
    k_a, kneg_a = keys["a"][:, 0], keys["a"][:, 1]
    k_m, kneg_m = keys["m"][:, 0], keys["m"][:, 1]
    pos = jnp.sum(q_m * k_m, -1) / temperature
    neg = jnp.sum(q_m * kneg_m, -1) / temperature
    rsp = jnp.mean(jnp.maximum(0.0, margin - (pos - neg)))
    ce1, acc1 = common.info_nce(q_a, k_a, queue, temperature)
    ce2, acc2 = common.info_nce(q_a, kneg_a, queue, temperature)
    avid = ce1 + ce2
    total = avid_weight * avid + rsp_weight * rsp
    metrics = {
        "pretext_loss": total,
        "rsp_loss": rsp,
        "avid_loss": avid,
        "accuracy": jnp.mean(pos > neg),
        "avid_accuracy": 0.5 * (acc1 + acc2),
    }
    return total, metrics, jax.lax.stop_gradient(kneg_a)
