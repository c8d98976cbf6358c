"""The configured distillation objective of docs/design.md (eq. T1, "The total objective").

``L = ce_weight CE + kd_weight KD + sdd_weight SDD + sdd.adapter_weight ADAPT
    + rkd_distance_weight RKD-D + rkd_angle_weight RKD-A + feature_kd_weight FitNets``

where KD is DATW (``teacher_weighting="datw"``, ``losses.datw``, with the variants
of ``loss.datw``), KD against the uniform mean of the ``kd_teachers``
(``"uniform"``), or one of the controls and peers of docs/design.md: ``"fixed"``
(``loss.teacher_weights``), ``"oracle"``, ``"ca_mkd"``, ``"ebkd"``, for any number of
teachers; ``loss.datw.place`` says whether the weights mix the teachers into one
target or weight per-teacher KL terms. ``ensemble_space`` says what a mix averages:
the logits (``"logits"``, docs/design.md eq. K3, ``softmax(sum_k w_k z_k / T)``)
or the softened
probabilities (``"probs"``, eq. K4, ``sum_k w_k softmax(z_k / T)``, the teacher-ensemble
study's setting). A term whose
weight is 0 is not computed at all, and its teachers and heads are not needed,
so every ablation (scratch, single-teacher KD, uniform dual teacher, +DATW,
+SDD, +RKD) is a config override. This is the only module of ``losses`` that
reads a config: the ``loss`` section of ``configs/default.py``.

The train step uses three entry points:

* :func:`required_teachers` - which teachers to run;
* :class:`DistillationHeads` - the training-only trainable parts (the Structure
  Discrepancy Branch and adapters), in their own parameter subtree;
* :func:`total_loss` - the scalar loss and its metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vkd_jax.losses import datw, feature, kd, rkd, sdd
from vkd_jax.models import sdb

Array = jax.Array
Features = Mapping[str, Array]

LAST_STAGE = "last_stage"
_STAGE_RE = re.compile(r"^stage(\d+)$")
_WEIGHTINGS = ("datw", "uniform", "fixed", "oracle", "ca_mkd", "ebkd")
_SPACES = ("logits", "probs")

# Keys of DistillationHeads' outputs.
SDD_RESIDUAL = "sdd_residual"
# Key of total_loss's constants: the fitted SDD residual map (losses.sdd.fit_residual_map).
SDD_RESIDUAL_MAP = "sdd_residual_map"
SDD_ADAPTER = "sdd_adapter"
FEATURE_KD = "feature_kd"


def resolve_feature(features: Features, key: str) -> Array:
    """Looks a feature up by name; ``"last_stage"`` means the highest-numbered ``stageN``.

    Args:
      features: a model's feature dict, e.g. ``{"stem", "stage1".."stage4", "pre_logits"}``.
      key: a key of ``features`` or ``"last_stage"``.

    Returns:
      The feature array.
    """
    if key == LAST_STAGE:
        stages = [(int(m.group(1)), k) for k in features if (m := _STAGE_RE.match(k))]
        if not stages:
            raise KeyError(f"{LAST_STAGE!r}: no stageN feature among {sorted(features)}")
        key = max(stages)[1]
    if key not in features:
        raise KeyError(f"feature {key!r} not among {sorted(features)}")
    return features[key]


def _on(weight: float) -> bool:
    return float(weight) != 0.0


def sdd_uses_residual_map(loss_cfg: Any) -> bool:
    """Whether the objective needs a fitted SDD residual map (``sdd.target == "residual"``)."""
    if not _on(loss_cfg.sdd_weight):
        return False
    target = loss_cfg.sdd.get("target", "random_projections")
    if target not in sdd.TARGETS:
        raise ValueError(f"loss.sdd.target must be one of {sdd.TARGETS}, got {target!r}")
    return target == "residual"


def required_teachers(loss_cfg: Any) -> tuple[str, ...]:
    """Teacher names whose outputs the enabled (non-zero-weight) terms need.

    Args:
      loss_cfg: the config ``loss`` section (ConfigDict or FrozenConfigDict).

    Returns:
      Sorted tuple of unique teacher names (empty for training from scratch).
    """
    names: set[str] = set()
    if _on(loss_cfg.kd_weight):
        names.update(loss_cfg.kd_teachers)
    if _on(loss_cfg.sdd_weight):
        names.update((loss_cfg.sdd.vit_teacher, loss_cfg.sdd.cnn_teacher))
    if _on(loss_cfg.sdd.adapter_weight):
        names.add(loss_cfg.sdd.cnn_teacher)
    if _on(loss_cfg.rkd_distance_weight) or _on(loss_cfg.rkd_angle_weight):
        names.add(loss_cfg.rkd.teacher)
    if _on(loss_cfg.feature_kd_weight):
        names.add(loss_cfg.feature_kd.teacher)
    return tuple(sorted(names))


class DistillationHeads(nn.Module):
    """Training-only trainable heads of the enabled terms (only a ``params`` collection).

    * ``sdd_weight > 0``: ``"sdd_residual"``, the Structure Discrepancy Branch
      (``models.sdb``) on ``sdd.student_feature``, ``(B, T', H', W', D)``; with the
      residual target ``D = min(sdd.dim, C_vit)`` (the residual's width, read from the
      ViT teacher's feature);
    * ``sdd.adapter_weight > 0``: ``"sdd_adapter"``, a 1x1x1 conv to ``D`` pooled to
      the grid, matched to ``phi_cnn(f_cnn)``, ``(B, T', H', W', D)``;
    * ``feature_kd_weight > 0``: ``"feature_kd"``, the FitNets regressor (Romero et
      al. 2015): a 1x1x1 conv (a Dense on the channel axis) from the student's to the
      teacher's width, pooled to the teacher's grid when the grids differ; the shape
      of ``feature_kd.teacher_feature``.

    With no such term enabled it returns ``{}`` and has no parameters. Its parameters
    are a subtree of their own, absent from the exported student.

    Attributes:
      loss_cfg: the config ``loss`` section.
      dtype: computation dtype of the heads (parameters stay float32).
    """

    loss_cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        student_features: Features,
        teacher_features: Mapping[str, Features],
        *,
        train: bool,
    ) -> dict[str, Array]:
        """Computes the training-only predictions.

        Args:
          student_features: the student's feature dict.
          teacher_features: teacher name -> feature dict (only the teacher of
            ``feature_kd`` and, for the SDD residual, the ViT teacher are read, for
            their shapes).
          train: training mode (the heads have no dropout or batch statistics).

        Returns:
          Dict of the enabled heads' outputs (keys above).
        """
        cfg = self.loss_cfg
        out: dict[str, Array] = {}
        if _on(cfg.sdd_weight):
            x = resolve_feature(student_features, cfg.sdd.student_feature)
            dim = int(cfg.sdd.dim)
            if sdd_uses_residual_map(cfg):
                f_vit = resolve_feature(teacher_features[cfg.sdd.vit_teacher], cfg.sdd.vit_feature)
                dim = sdd.residual_width(f_vit.shape[-1], dim)
            branch = sdb.StructureDiscrepancyBranch(
                dim=dim, grid=tuple(cfg.sdd.grid), dtype=self.dtype, name="sdd_branch"
            )
            out[SDD_RESIDUAL] = branch(x, train=train)
        if _on(cfg.sdd.adapter_weight):
            x = resolve_feature(student_features, cfg.sdd.student_feature)
            y = nn.Dense(int(cfg.sdd.dim), dtype=self.dtype, name="sdd_adapter")(x)
            out[SDD_ADAPTER] = sdd.adaptive_avg_pool3d(y, tuple(cfg.sdd.grid))
        if _on(cfg.feature_kd_weight):
            x = resolve_feature(student_features, cfg.feature_kd.student_feature)
            t = resolve_feature(
                teacher_features[cfg.feature_kd.teacher], cfg.feature_kd.teacher_feature
            )
            y = nn.Dense(t.shape[-1], dtype=self.dtype, name="feature_kd_adapter")(x)
            if y.ndim == 5 and y.shape[1:4] != t.shape[1:4]:
                y = sdd.adaptive_avg_pool3d(y, t.shape[1:4])
            if y.shape[1:] != t.shape[1:]:
                raise ValueError(
                    f"feature_kd: student {x.shape} cannot be adapted to teacher {t.shape}"
                )
            out[FEATURE_KD] = y.astype(jnp.float32)
        return out


def _teacher(teacher_outputs: Mapping[str, Any], name: str, term: str) -> tuple[Array, Features]:
    if name not in teacher_outputs:
        raise KeyError(
            f"loss term {term!r} needs teacher {name!r}; got teachers {sorted(teacher_outputs)}"
        )
    return teacher_outputs[name]


def _head(head_outputs: Mapping[str, Array], key: str, term: str) -> Array:
    if key not in head_outputs:
        raise KeyError(f"loss term {term!r} needs DistillationHeads output {key!r}")
    return head_outputs[key]


def _accuracy(logits: Array, labels: Array) -> Array:
    if labels.ndim == logits.ndim:  # one-hot / soft labels
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def _pearson(a: Array, b: Array) -> Array:
    """Pearson correlation of two ``(B,)`` vectors; 0 where either is constant."""
    a, b = a - jnp.mean(a), b - jnp.mean(b)
    denom = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(denom > 1e-12, jnp.sum(a * b) / jnp.maximum(denom, 1e-12), 0.0)


def total_loss(
    loss_cfg: Any,
    *,
    labels: Array,
    student_logits: Array,
    student_features: Features,
    teacher_outputs: Mapping[str, tuple[Array, Features]],
    head_outputs: Mapping[str, Array],
    constants: Mapping[str, Any] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The total distillation loss of docs/design.md (eq. T1), batch-averaged, and its metrics.

    Args:
      loss_cfg: the config ``loss`` section.
      labels: ``(B,)`` integer labels (or ``(B, C)`` soft labels).
      student_logits: ``(B, C)``.
      student_features: the student's feature dict.
      teacher_outputs: teacher name -> ``(logits, features)``; only the teachers of
        :func:`required_teachers` are read.
      head_outputs: output of :class:`DistillationHeads`.
      constants: fitted, non-trainable inputs of the terms: ``"sdd_residual_map"``
        (:func:`vkd_jax.losses.sdd.fit_residual_map`'s arrays), needed when
        ``sdd.target == "residual"``.

    Returns:
      ``(loss, metrics)``: a float32 scalar (the weighted sum of batch means of the
      per-example terms; RKD is batch-level already) and float32 scalars: each
      enabled term unweighted (``ce``, ``kd``, ``sdd``, ``sdd_adapter``,
      ``rkd_distance``, ``rkd_angle``, ``feature_kd``), ``total``, ``accuracy`` and,
      when KD is on, per teacher: ``datw_weight/<teacher>`` (its mean weight),
      ``datw_confidence/<teacher>`` and ``datw_discrepancy/<teacher>`` (mean ``c_k`` and
      ``d_k`` of docs/design.md eqs. D1-D2), and with DATW weighting of several teachers
      ``datw_corr_confidence/<teacher>`` and ``datw_corr_discrepancy/<teacher>``, the
      Pearson correlations across the batch of its weight with ``c_k`` and ``d_k``.
    """
    cfg = loss_cfg
    metrics: dict[str, Array] = {}
    weighted: list[Array] = []

    def add(name: str, weight: float, value: Array) -> None:
        metrics[name] = value
        weighted.append(float(weight) * value)

    if _on(cfg.ce_weight):
        ce = kd.cross_entropy(student_logits, labels, label_smoothing=cfg.label_smoothing)
        add("ce", cfg.ce_weight, jnp.mean(ce))

    if _on(cfg.kd_weight):
        names = tuple(cfg.kd_teachers)
        if not names:
            raise ValueError("kd_weight > 0 needs at least one teacher in kd_teachers")
        stack = jnp.stack(
            [_teacher(teacher_outputs, n, "kd")[0].astype(jnp.float32) for n in names]
        )
        if cfg.teacher_weighting not in _WEIGHTINGS:
            raise ValueError(
                f"teacher_weighting must be one of {_WEIGHTINGS}, got {cfg.teacher_weighting!r}"
            )
        # Confidence and discrepancy are computed (and logged) under every weighting, so
        # the ablation's runs can be compared on what DATW would have seen.
        d = cfg.datw
        w, conf, disc = datw.datw_terms(
            student_logits,
            stack,
            temperature=cfg.temperature,
            confidence_weight=d.confidence_weight,
            discrepancy_weight=d.discrepancy_weight,
            weight_temperature=d.weight_temperature,
            combine=d.combine,
            confidence=d.get("confidence", "entropy"),
            confidence_temperature=d.get("confidence_temperature", 0.0),
            discrepancy=d.get("discrepancy", "cosine"),
            standardize_terms=d.get("standardize", False),
        )
        weighting = cfg.teacher_weighting
        adaptive = weighting == "datw"
        if weighting == "uniform":
            w = jnp.full((stack.shape[1], len(names)), 1.0 / len(names), jnp.float32)
        elif weighting == "fixed":
            given = tuple(cfg.get("teacher_weights", ()))
            if len(given) != len(names):
                raise ValueError(
                    f"teacher_weighting='fixed' needs loss.teacher_weights with one weight per "
                    f"kd_teacher {names}, got {given}"
                )
            w = datw.fixed_weights(given, stack.shape[1])
        elif weighting == "oracle":
            w = datw.oracle_weights(stack, labels)
        elif weighting == "ca_mkd":
            w = datw.ca_mkd_weights(stack, labels)
        elif weighting == "ebkd":
            t_c = d.get("confidence_temperature", 0.0) or cfg.temperature
            w = datw.ebkd_weights(stack, temperature=t_c)
        if cfg.ensemble_space not in _SPACES:
            raise ValueError(f"ensemble_space must be one of {_SPACES}, got {cfg.ensemble_space!r}")
        value = datw.weighted_kd_loss(
            student_logits,
            stack,
            w,
            temperature=cfg.temperature,
            place=d.get("place", "mix"),
            space=cfg.ensemble_space,
        )
        add("kd", cfg.kd_weight, jnp.mean(value))
        for k, n in enumerate(names):
            metrics[f"datw_weight/{n}"] = jnp.mean(w[:, k])
            metrics[f"datw_confidence/{n}"] = jnp.mean(conf[:, k])
            metrics[f"datw_discrepancy/{n}"] = jnp.mean(disc[:, k])
            if adaptive and len(names) > 1:
                # Across the batch: does a teacher get more weight where it is more
                # confident, or further from the student?
                metrics[f"datw_corr_confidence/{n}"] = _pearson(w[:, k], conf[:, k])
                metrics[f"datw_corr_discrepancy/{n}"] = _pearson(w[:, k], disc[:, k])

    if _on(cfg.sdd_weight) or _on(cfg.sdd.adapter_weight):
        grid, dim, seed = tuple(cfg.sdd.grid), int(cfg.sdd.dim), int(cfg.sdd.projection_seed)
        f_cnn = resolve_feature(
            _teacher(teacher_outputs, cfg.sdd.cnn_teacher, "sdd")[1], cfg.sdd.cnn_feature
        )
        if _on(cfg.sdd_weight):
            f_vit = resolve_feature(
                _teacher(teacher_outputs, cfg.sdd.vit_teacher, "sdd")[1], cfg.sdd.vit_feature
            )
            residual_map = None
            if sdd_uses_residual_map(cfg):
                residual_map = (constants or {}).get(SDD_RESIDUAL_MAP)
                if residual_map is None:
                    raise ValueError(
                        "loss.sdd.target = 'residual' needs the fitted map: pass "
                        f"constants={{{SDD_RESIDUAL_MAP!r}: ...}} (vkd_jax.residual_fit)"
                    )
            value = sdd.sdd_loss(
                _head(head_outputs, SDD_RESIDUAL, "sdd"),
                f_vit,
                f_cnn,
                grid=grid,
                dim=dim,
                seed=seed,
                loss_type=cfg.sdd.loss_type,
                residual_map=residual_map,
            )
            add("sdd", cfg.sdd_weight, jnp.mean(value))
        if _on(cfg.sdd.adapter_weight):
            value = sdd.sdd_adapter_loss(
                _head(head_outputs, SDD_ADAPTER, "sdd_adapter"),
                f_cnn,
                grid=grid,
                dim=dim,
                seed=seed,
                loss_type=cfg.sdd.loss_type,
            )
            add("sdd_adapter", cfg.sdd.adapter_weight, jnp.mean(value))

    if _on(cfg.rkd_distance_weight) or _on(cfg.rkd_angle_weight):
        t_emb = resolve_feature(
            _teacher(teacher_outputs, cfg.rkd.teacher, "rkd")[1], cfg.rkd.teacher_feature
        )
        s_emb = resolve_feature(student_features, cfg.rkd.student_feature)
        if _on(cfg.rkd_distance_weight):
            add("rkd_distance", cfg.rkd_distance_weight, rkd.rkd_distance_loss(s_emb, t_emb))
        if _on(cfg.rkd_angle_weight):
            add("rkd_angle", cfg.rkd_angle_weight, rkd.rkd_angle_loss(s_emb, t_emb))

    if _on(cfg.feature_kd_weight):
        t_feat = resolve_feature(
            _teacher(teacher_outputs, cfg.feature_kd.teacher, "feature_kd")[1],
            cfg.feature_kd.teacher_feature,
        )
        value = feature.feature_kd_loss(_head(head_outputs, FEATURE_KD, "feature_kd"), t_feat)
        add("feature_kd", cfg.feature_kd_weight, jnp.mean(value))

    total = sum(weighted) if weighted else jnp.zeros((), jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    metrics["total"] = total
    metrics["accuracy"] = _accuracy(student_logits, labels)
    return total, metrics
