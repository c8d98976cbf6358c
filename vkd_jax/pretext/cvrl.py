"""CVRL: spatiotemporal contrastive video representation learning (Qian et al., CVPR 2021).

Following the paper and the TF Model Garden code (``video_ssl``). Two clips of
one video (views 0 and 1):

* **temporal interval** ``d`` between their starts drawn from the decreasing
  density ``f(d) ∝ 1 - (d / M)^p`` on ``[0, M)``, ``M = T - (num_frames - 1) *
  stride`` (``p = power = 1``: linear), by inverting its CDF
  ``F(d) = (p + 1) d / (p M) - d^(p+1) / (p M^(p+1))``; first start uniform in
  ``[0, M - d)``, the pair's order random;
* **temporally consistent strong spatial augmentation**, drawn per clip and the
  same for all of its frames: random resized crop (area 0.3-1, aspect 0.5-2),
  flip (when ``data.random_flip``), colour jitter (brightness, contrast,
  saturation 0.8 x strength, hue 0.2 x strength, random order, with
  probability 0.8), grayscale (0.2), Gaussian blur (view 0 always, view 1 with
  probability 0.1), solarization (view 1, 0.2).

Loss: SimCLR's NT-Xent (:func:`common.nt_xent`) over the projection MLP's
outputs (``num_layers - 1`` x [Dense, BatchNorm, ReLU], then Dense to ``dim``),
temperature 0.1, negatives the other ``2N - 2`` clips of the **global** batch
(jit over the sharded batch gathers them across devices and processes). The
Model Garden code sums the two directions' means (twice this average: only the
learning rate's scale differs).

Reported pretext accuracy: the share of clips whose nearest other clip in the
batch is their positive (chance ``1 / (2N - 1)``).

Choice: the jitter strength defaults to 0.5, not the paper's 1.0. In
``synthetic_actions`` every clip has the same cast of shapes and what tells two
videos apart is mostly their colours, which strength 1.0 (with grayscale)
erases (the held-out pretext accuracies of both strengths are in docs/pretext.md,
"On the built-in data"). On real video pass 1.0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.models import layers
from vkd_jax.pretext import common


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    del pretext_cfg
    return common.TaskSpec(
        name="cvrl",
        num_views=2,
        num_frames=int(data_cfg.num_frames),
        num_classes=0,
        chance=0.0,  # Set from the batch size by the stage: 1 / (2N - 1).
        description="CVRL: two clips of one video vs the rest of the global batch",
    )


class Head(nn.Module):
    """The projection MLP: (num_layers - 1) x [Dense, BatchNorm, ReLU] -> Dense(dim)."""

    hidden_dim: int = 2048
    dim: int = 128
    num_layers: int = 4

    @nn.compact
    def __call__(self, embeddings: jax.Array, *, train: bool = False) -> jax.Array:
        x = embeddings.astype(jnp.float32)
        for _ in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, use_bias=False)(x)
            x = layers.BatchNorm()(x, train=train)  # The zoo's BatchNorm (PyTorch's).
            x = nn.relu(x)
        return nn.Dense(self.dim)(x)


def head(task: common.TaskSpec, pretext_cfg) -> Head:
    del task
    c = pretext_cfg.cvrl
    return Head(hidden_dim=int(c.hidden_dim), dim=int(c.dim), num_layers=int(c.num_layers))


def loss(projections: jax.Array, *, temperature: float) -> tuple[jax.Array, dict]:
    """NT-Xent of the two views' projections ``(B, 2, dim)``."""
    value, accuracy = common.nt_xent(projections[:, 0], projections[:, 1], temperature)
    return value, {"pretext_loss": value, "accuracy": accuracy}
