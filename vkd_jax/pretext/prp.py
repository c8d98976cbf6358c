"""PRP, video playback rate perception (Yao et al., CVPR 2020, arXiv 2006.11476).

A clip of ``num_frames`` frames is sampled with dilation ``r`` (every r-th frame,
from a uniformly random start at which the whole span fits) for ``r`` drawn
uniformly from the task's rates, and a linear classifier on the pooled
embedding predicts which rate. Complexity (arXiv 2306.06010): C1/C2/C3 rates
{1, 2} / {1, 2, 4} / {1, 2, 4, 8}.

Built: the discriminative branch (rate classification, cross-entropy), which is
what the benchmark's complexities vary, as a linear classifier on the pooled
embedding (the authors add one 3x3x3 conv before pooling). Not built: PRP's
generative branch (a decoder reconstructing the clip at half the rate with a
motion-weighted MSE; the authors' total is ``L_recon + 0.1 L_cls``). So this
is PRP's discriminative half, and results name it so.

A video shorter than a clip's span (``(num_frames - 1) * r + 1`` frames) loops
around, which a model can detect: the input pipeline logs a warning when the
dataset's videos are shorter than the largest span (`synthetic_actions/long`,
64 frames, fits rate 8 at 8 frames).
"""

from __future__ import annotations

from vkd_jax.pretext import common

RATES = {1: (1, 2), 2: (1, 2, 4), 3: (1, 2, 4, 8)}  # Complexity -> playback rates.


def spec(pretext_cfg, data_cfg) -> common.TaskSpec:
    rates = RATES[int(pretext_cfg.complexity)]
    return common.TaskSpec(
        name="prp",
        num_views=1,
        num_frames=int(data_cfg.num_frames),
        num_classes=len(rates),
        chance=1.0 / len(rates),
        description=f"PRP C{pretext_cfg.complexity}: playback rate among {rates}",
    )


def head(task: common.TaskSpec, pretext_cfg) -> common.LinearClassifier:
    return common.LinearClassifier(task.num_classes, dropout_rate=float(pretext_cfg.dropout_rate))


def loss(logits, labels):
    """Cross-entropy of the rate index."""
    return common.classification_loss(logits, labels)
