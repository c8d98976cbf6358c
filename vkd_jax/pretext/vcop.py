"""VCOP, video clip order prediction (Xu et al., CVPR 2019).

``N`` sub-clips of one video (``clip_frames`` frames each, ``clip_stride``
apart within a clip, ``interval`` frames between clips, in order, from a uniformly
random start) are shuffled by a permutation drawn uniformly from the ``N!``
permutations; a shared backbone embeds each, the embeddings of every pair
``i < j`` (in the shuffled order) are concatenated and go through one shared
``Dense(hidden) + ReLU``; the ``N(N-1)/2`` pair features are concatenated,
dropped out and classified among the ``N!`` permutations. Complexity (arXiv
2306.06010): C1/C2/C3 = 3/4/5 sub-clips, 6/24/120 classes.

Label convention: the class is the permutation's index in
:func:`permutations` (lexicographic, as ``itertools.permutations``), and the
shuffled tuple's position ``i`` holds original sub-clip ``perm[i]``.

As in the authors' code, each sub-clip gets its own random crop (the same for
all of its frames), so that the order cannot be read from pixels continuing
across clip boundaries. Their clips are contiguous (stride 1), 16 frames, 8
apart; the defaults here (4 frames, stride 2, 4 apart) fit five clips into the
64 frames of ``synthetic_actions/long``.
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vkd_jax.pretext import common

NUM_CLIPS = {1: 3, 2: 4, 3: 5}  # Complexity -> sub-clips per tuple.


def permutations(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)`` in lexicographic order, int32 ``(n!, n)``."""
    return np.asarray(list(itertools.permutations(range(n))), np.int32)


def inverse(perm: np.ndarray) -> np.ndarray:
    """The inverse permutation(s): ``inverse(p)[p[i]] == i`` (works on ``(..., n)``)."""
    return np.argsort(perm, axis=-1).astype(np.int32)


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    del data_cfg
    n = NUM_CLIPS[int(pretext_cfg.complexity)]
    return common.TaskSpec(
        name="vcop",
        num_views=n,
        num_frames=int(pretext_cfg.vcop.clip_frames),
        num_classes=math.factorial(n),
        chance=1.0 / math.factorial(n),
        description=f"VCOP C{pretext_cfg.complexity}: order of {n} clips ({math.factorial(n)} "
        "permutations)",
    )


class Head(nn.Module):
    """Pairwise relations of the clip embeddings, then the permutation classifier."""

    num_classes: int
    hidden_dim: int = 512
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, embeddings: jax.Array, *, train: bool = False) -> jax.Array:
        x = embeddings.astype(jnp.float32)  # (B, N, D), in the shuffled order.
        n = x.shape[1]
        pair = nn.Dense(self.hidden_dim, name="pair")
        feats = [
            nn.relu(pair(jnp.concatenate([x[:, i], x[:, j]], -1)))
            for i in range(n)
            for j in range(i + 1, n)
        ]
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.concatenate(feats, -1))
        return nn.Dense(self.num_classes, name="classifier")(h)


def head(task: common.TaskSpec, pretext_cfg) -> Head:
    return Head(
        task.num_classes,
        hidden_dim=int(pretext_cfg.vcop.hidden_dim),
        dropout_rate=float(pretext_cfg.dropout_rate),
    )


def loss(logits, labels):
    """Cross-entropy of the permutation index."""
    return common.classification_loss(logits, labels)
