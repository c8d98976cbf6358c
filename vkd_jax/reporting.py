"""Summaries, paired comparisons, the verdict rule and table writers of every results table.

The ablation (:mod:`vkd_jax.experiment`) and the teacher-ensemble tables
(:mod:`vkd_jax.ensemble`) compare rows that were run on the same seeds: a seed
gives every row the same student initialisation and data order, so the rows are
*paired* and the comparison is made on the per-seed differences
(docs/design.md, "The verdict rule"):

* ``d_i = a_i - b_i`` for seeds ``i = 1..n`` (``b`` may be one number, e.g. a
  teacher trained once: then ``d_i = a_i - b``);
* ``mean(d)``, ``s = std(d)`` (sample, ``n - 1`` in the denominator);
* the 95% confidence interval ``mean(d) ± t_{0.975, n-1} s / sqrt(n)`` (Student's t
  with ``n - 1`` degrees of freedom);
* the verdict on the claim "``a`` beats ``b``": **holds** when the whole interval
  lies above 0, **the opposite holds** when it lies below 0, **not shown** when it
  contains 0, and also with one seed (no spread, so no interval).

A single-run reference (a teacher) contributes no spread of its own: the interval
then covers only the seed-to-seed spread of the other side.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from vkd_jax import storage

HOLDS = "holds"
OPPOSITE = "the opposite holds"
NOT_SHOWN = "not shown"
VERDICTS = (HOLDS, NOT_SHOWN, OPPOSITE)
LEVEL = 0.95  # Confidence level of every interval in the tables.

VERDICT_RULE = (
    "Verdicts come from paired per-seed differences (same seed = same student "
    "initialisation and data order): a claim holds when the 95% t-interval of the mean "
    "difference (n - 1 degrees of freedom) lies above 0, the opposite holds when it lies "
    "below 0, and it is not shown otherwise (or with a single seed)."
)


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value), in the values' units."""
    a = np.asarray(values, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("mean_std of no values")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def t_quantile(prob: float, dof: int) -> float:
    """Quantile ``t_{prob, dof}`` of Student's t distribution (``t_{0.975, 2} = 4.303``)."""
    if dof < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {dof}")
    return float(stats.t.ppf(prob, dof))


def verdict(low: float, high: float) -> str:
    """The verdict rule on an interval of ``a - b``: above 0 holds, below 0 the opposite."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_SHOWN
    if low > 0:
        return HOLDS
    if high < 0:
        return OPPOSITE
    return NOT_SHOWN


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of ``a`` against ``b`` over seeds (in the inputs' units).

    Attributes:
      differences: per-seed ``a_i - b_i``.
      mean: their mean.
      std: their sample standard deviation (0 for one seed).
      n: number of seeds.
      low, high: the ``level`` t-interval of the mean (``nan`` for one seed).
      level: the confidence level.
      verdict: :func:`verdict` of the interval.
    """

    differences: tuple[float, ...]
    mean: float
    std: float
    n: int
    low: float
    high: float
    level: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["differences"] = list(self.differences)
        return d


def paired_comparison(a, b, *, level: float = LEVEL) -> Comparison:
    """Paired per-seed comparison of ``a`` with ``b`` (module docstring).

    Args:
      a: ``(n,)`` values of the row the claim is about, one per seed.
      b: ``(n,)`` values of the compared row on the same seeds, in the same order, or
        one number (a reference trained once).
      level: confidence level of the two-sided interval.

    Returns:
      The :class:`Comparison`.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64)
    if b.ndim == 0:
        b = np.full_like(a, float(b))
    b = b.reshape(-1)
    if a.size == 0 or a.shape != b.shape:
        raise ValueError(
            f"a paired comparison needs the same seeds on both sides: {a.size} vs {b.size} values"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    mean, std = mean_std(d)
    n = int(d.size)
    if n > 1:
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = float("nan")
    return Comparison(
        differences=tuple(float(x) for x in d),
        mean=mean,
        std=std,
        n=n,
        low=low,
        high=high,
        level=level,
        verdict=verdict(low, high),
    )


# ---------------------------------------------------------------------------- writers


def fmt_mean_std(values, *, scale: float = 100.0, digits: int = 1) -> str:
    """``"55.0 ± 1.4"`` (``scale`` converts fractions to percent); one value: ``"55.0"``."""
    mean, std = mean_std(scale * np.asarray(values, np.float64))
    if np.asarray(values).size == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_comparison(c: Comparison | Mapping[str, Any], *, digits: int = 1) -> str:
    """``"+2.3 [-1.0, +5.6]"``: the mean difference and its interval (no interval for n = 1)."""
    get = c.get if isinstance(c, Mapping) else lambda k: getattr(c, k)
    mean, low, high = get("mean"), get("low"), get("high")
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:+.{digits}f} (n = {get('n')}, no interval)"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines; cells are converted with ``str``."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def write_report(workdir: str, name: str, results: Mapping[str, Any], markdown: str) -> None:
    """Writes ``<workdir>/<name>.json`` and ``<workdir>/<name>.md`` (call on one process)."""
    storage.makedirs(workdir)
    storage.write_json(os.path.join(workdir, f"{name}.json"), results, indent=2, default=str)
    storage.write_text(os.path.join(workdir, f"{name}.md"), markdown)
