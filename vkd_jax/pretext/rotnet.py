"""RotNet for video (3DRotNet; Jing & Tian, arXiv 1811.11387, 2018).

The whole clip is rotated in the image plane by ``k * 90`` degrees
(counter-clockwise, every frame alike) and a linear classifier on the pooled
backbone embedding predicts ``k``. Complexity (the benchmark of arXiv
2306.06010): C1/C2/C3 classify 2/3/4 rotations, ``k`` in ``{0, .., K-1}``.

As in the authors' code, every clip enters the batch in all ``K`` rotations
(one crop, then rotated ``K`` times: ``train.batch_size`` videos give ``K x``
as many clips), and the loss is the cross-entropy averaged over them:
``L = -1/K sum_k log p(k | rot(x, k))``. Rotations are exact (``tf.image.rot90``
on square crops: a permutation of pixels, no interpolation).
"""

from __future__ import annotations

from vkd_jax.pretext import common

NUM_ROTATIONS = {1: 2, 2: 3, 3: 4}  # Complexity -> rotations classified.


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    k = NUM_ROTATIONS[int(pretext_cfg.complexity)]
    return common.TaskSpec(
        name="rotnet",
        num_views=k,
        num_frames=int(data_cfg.num_frames),
        num_classes=k,
        chance=1.0 / k,
        description=f"RotNet C{pretext_cfg.complexity}: which of {k} rotations (k x 90 deg)",
    )


def head(task: common.TaskSpec, pretext_cfg) -> common.LinearClassifier:
    return common.LinearClassifier(task.num_classes, dropout_rate=float(pretext_cfg.dropout_rate))


def loss(logits, labels):
    """Cross-entropy of the rotation index."""
    return common.classification_loss(logits, labels)
