"""What distillation did during training, drawn from a stage's logged metrics.

A final accuracy says whether a method helped, not how. For a distillation
stage this module plots, from ``metrics.jsonl`` (:func:`read_history`):

* the DATW weight of each teacher over training (docs/design.md eq. D4; constant
  ``1/K`` under uniform weighting);
* each teacher's mean confidence ``c_k`` (eq. D1) and discrepancy from the
  student ``d_k`` (eq. D2), the two inputs of its weight;
* the correlation across each batch of a teacher's weight with its ``c_k`` and
  with its ``d_k``: positive values mean DATW favoured the teacher on the clips
  where it was more confident / further from the student, as the method intends;
* the loss terms (cross-entropy, KD, SDD, RKD) over training.

The metrics are the batch means the training loop logs every
``train.log_every`` steps, so the figure costs nothing during training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from vkd_jax import _deps, storage

HISTORY_FILE = "metrics.jsonl"  # Logged training metrics, one JSON object per line.
LOSS_TERMS = ("ce", "kd", "sdd", "sdd_adapter", "rkd_distance", "rkd_angle", "feature_kd")


def append_history(workdir: str, step: int, means: Mapping[str, float]) -> None:
    """Appends one logged point to ``<workdir>/metrics.jsonl`` (read back for plots).

    TensorBoard has the same points; this plain file needs no event parser. After
    a resume a step may appear twice: :func:`read_history` keeps the last values.
    """
    if jax.process_index() == 0:
        storage.append_text(
            os.path.join(workdir, HISTORY_FILE), json.dumps({"step": step, **means}) + "\n"
        )


def read_history(workdir: str) -> list[dict[str, float]]:
    """The logged training metrics of a stage, one dict per logged step, in step order."""
    path = os.path.join(workdir, HISTORY_FILE)
    if not storage.isfile(path):
        return []
    by_step: dict[int, dict[str, float]] = {}
    for line in storage.read_text(path).splitlines():
        if line.strip():
            point = json.loads(line)
            # Points of one step merge (training means and a periodic evaluation's
            # scores); a replayed step's later values win.
            by_step.setdefault(point["step"], {}).update(point)
    return [by_step[k] for k in sorted(by_step)]


def teachers_in(history: Sequence[Mapping[str, float]]) -> list[str]:
    """Teacher names that have a logged DATW weight, in first-seen order."""
    names: list[str] = []
    for point in history:
        for key in point:
            if key.startswith("datw_weight/") and key.split("/", 1)[1] not in names:
                names.append(key.split("/", 1)[1])
    return names


def series(history: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one logged metric, skipping points that lack it."""
    points = [(p["step"], p[key]) for p in history if key in p]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values, np.float64)


def summarize(history: Sequence[Mapping[str, float]], last_fraction: float = 0.5) -> dict:
    """Per-teacher means over the last ``last_fraction`` of the logged points.

    Returns:
      ``{teacher: {"weight", "confidence", "discrepancy", "corr_confidence",
      "corr_discrepancy"}}`` (keys present where logged), for results tables.
    """
    out: dict[str, dict[str, float]] = {}
    for name in teachers_in(history):
        stats = {}
        for field in ("weight", "confidence", "discrepancy", "corr_confidence", "corr_discrepancy"):
            _, values = series(history, f"datw_{field}/{name}")
            if len(values):
                tail = values[int(len(values) * (1 - last_fraction)) :]
                stats[field] = float(np.mean(tail))
        out[name] = stats
    return out


def plot(history: Sequence[Mapping[str, float]], path: str, *, title: str = "") -> str | None:
    """Writes the four-panel figure described in the module docstring as a PNG.

    Args:
      history: logged points (``read_history``), each with a ``step``.
      path: output PNG.
      title: figure title.

    Returns:
      ``path``, or None when the history holds no distillation metrics.
    """
    teachers = teachers_in(history)
    if not teachers:
        return None
    with _deps.extra("train", __name__):  # Figures need the train extra.
        import matplotlib

        matplotlib.use("Agg")  # Headless: training runs on servers without a display.
        import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    (ax_w, ax_cd), (ax_corr, ax_loss) = axes
    for i, name in enumerate(teachers):
        colour = colours[i % len(colours)]
        ax_w.plot(*series(history, f"datw_weight/{name}"), color=colour, label=name)
        ax_cd.plot(*series(history, f"datw_confidence/{name}"), color=colour,
                   label=f"{name}: confidence $c_k$")  # fmt: skip
        ax_cd.plot(*series(history, f"datw_discrepancy/{name}"), color=colour, linestyle="--",
                   label=f"{name}: discrepancy $d_k$")  # fmt: skip
        for key, style, what in (("corr_confidence", "-", "$c_k$"),
                                 ("corr_discrepancy", "--", "$d_k$")):  # fmt: skip
            steps, values = series(history, f"datw_{key}/{name}")
            if len(values):
                ax_corr.plot(steps, values, color=colour, linestyle=style,
                             label=f"{name}: corr(w, {what})")  # fmt: skip
    ax_w.axhline(1.0 / len(teachers), color="grey", linewidth=0.8, linestyle=":")
    ax_w.set_title("DATW weight per teacher (batch mean; dotted: uniform)")
    ax_w.set_ylim(0.0, 1.0)
    ax_cd.set_title("Teacher confidence and discrepancy from the student")
    ax_corr.set_title("Correlation across the batch of a teacher's weight with ...")
    ax_corr.axhline(0.0, color="grey", linewidth=0.8)
    ax_corr.set_ylim(-1.0, 1.0)
    if not ax_corr.get_legend_handles_labels()[0]:
        ax_corr.text(0.5, 0.5, "uniform weighting: no correlation", ha="center",
                     transform=ax_corr.transAxes)  # fmt: skip
    for i, term in enumerate(LOSS_TERMS):
        steps, values = series(history, term)
        if len(values):
            ax_loss.plot(steps, values, color=colours[i % len(colours)], label=term)
    ax_loss.set_yscale("log")
    ax_loss.set_title("Loss terms (unweighted)")
    for ax in axes.ravel():
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    storage.savefig(fig, path, dpi=100)
    plt.close(fig)
    return path
