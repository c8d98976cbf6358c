"""Model card of the zoo: parameters and GMACs of every full-size variant vs. the papers.

Run:
  python tools/model_card.py [--out model_card.md] [--xla]

For every family of :mod:`vkd_jax.models` and each variant with a standard (published) input
size, the card lists the parameter count at 400 classes (from ``jax.eval_shape``, nothing is
allocated), the GMACs of one clip at that input (:func:`vkd_jax.evaluation.count_macs`, fvcore
convention, traced without compute) and the published figure with the relative difference
where one can be cited. ``--xla`` adds XLA's cost-analysis count (compiles every full-size
model on the host: tens of seconds each). Families whose module is missing are listed as
skipped. Expected cost: about a minute on a laptop CPU without ``--xla``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

# Runnable as a script from a checkout: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vkd_jax import evaluation, models  # noqa: E402

# (family, variant) -> (published GMACs per clip at the standard input, source). The papers
# call these "GFLOPs" but count with fvcore's flop_count: one per multiply-add of conv /
# linear / matmul, i.e. MACs.
PUBLISHED_GMACS: dict[tuple[str, str], tuple[float, str]] = {
    ("x3d", "xs"): (0.60, "X3D (Feichtenhofer, CVPR 2020), Table 3"),
    ("x3d", "s"): (1.96, "X3D (Feichtenhofer, CVPR 2020), Table 3"),
    ("x3d", "m"): (4.73, "X3D (Feichtenhofer, CVPR 2020), Table 3"),
    ("x3d", "l"): (18.37, "X3D (Feichtenhofer, CVPR 2020), Table 3"),
    ("mvit", "v2_s"): (64.0, "MViTv2 (Li et al., CVPR 2022), Table 5 (16x4)"),
    ("mvit", "v2_b"): (225.0, "MViTv2 (Li et al., CVPR 2022), Table 5 (32x3)"),
    ("r2plus1d", "18"): (40.52, "torchvision R2Plus1D_18_Weights.KINETICS400_V1"),
    ("slowfast", "r50_8x8"): (65.7, "SlowFast (Feichtenhofer et al., ICCV 2019), Table 2"),
    ("slowfast", "r50_4x16"): (36.1, "SlowFast (Feichtenhofer et al., ICCV 2019), Table 2"),
    ("vit", "small"): (57.0, "VideoMAE (Tong et al., NeurIPS 2022), K400 table, ViT-S"),
    ("vit", "base"): (180.0, "VideoMAE (Tong et al., NeurIPS 2022), K400 table, ViT-B"),
}

NUM_CLASSES = 400


@dataclass
class Row:
    """One line of the card."""

    family: str
    variant: str
    input_shape: tuple[int, int, int]
    params: int
    gmacs: float
    published_gmacs: float | None = None
    source: str = ""
    xla_gmacs: float | None = None

    @property
    def rel_diff(self) -> float | None:
        """(ours - published) / published, or None without a published figure."""
        if self.published_gmacs is None:
            return None
        return (self.gmacs - self.published_gmacs) / self.published_gmacs


def _init_shapes(model: Any, input_shape: tuple[int, int, int]) -> Any:
    """Variable shapes of ``model`` at one clip of ``input_shape`` (abstract, no compute)."""
    video = jax.ShapeDtypeStruct((1, *input_shape, 3), jnp.float32)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x: model.init(keys, x, train=False), video)


def build_rows(
    registry: Any = None,
    *,
    num_classes: int = NUM_CLASSES,
    published: dict[tuple[str, str], tuple[float, str]] | None = None,
    xla: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[list[Row], list[str]]:
    """Measures every full-size variant of a model registry.

    Args:
      registry: an object with ``families()``, ``family_module(name)`` (raising
        ``ImportError`` for a family not written yet), ``variants(name)``,
        ``standard_input(name, variant)`` (None for tiny variants) and ``get_model(name, *,
        variant, num_classes)``; :mod:`vkd_jax.models` by default.
      num_classes: classifier size the parameters are counted at.
      published: ``(family, variant) -> (GMACs, source)``; :data:`PUBLISHED_GMACS` by default.
      xla: also record XLA's cost-analysis GMACs (compiles each model).
      log: progress callback.

    Returns:
      ``(rows, notes)``: one :class:`Row` per full-size variant, and notes on skipped families.
    """
    registry = models if registry is None else registry
    published = PUBLISHED_GMACS if published is None else published
    rows, notes = [], []
    for family in registry.families():
        try:
            registry.family_module(family)
        except ImportError as e:
            notes.append(f"{family}: skipped, its module is not available ({e}).")
            continue
        for variant in registry.variants(family):
            input_shape = registry.standard_input(family, variant)
            if input_shape is None:  # Tiny variants have no published counterpart.
                continue
            log(f"{family}/{variant} at {input_shape}")
            model = registry.get_model(family, variant=variant, num_classes=num_classes)
            variables = _init_shapes(model, tuple(input_shape))
            figure, source = published.get((family, variant), (None, ""))
            row = Row(
                family=family,
                variant=variant,
                input_shape=tuple(input_shape),
                params=evaluation.count_params(variables["params"]),
                gmacs=evaluation.count_macs(model, variables, tuple(input_shape)) / 1e9,
                published_gmacs=figure,
                source=source,
            )
            if xla:
                macs = evaluation.count_macs(model, variables, tuple(input_shape), method="xla")
                row.xla_gmacs = macs / 1e9
            rows.append(row)
    return rows, notes


def render_markdown(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """The card as Markdown: a table plus footnotes.

    Args:
      rows: measured variants.
      notes: lines appended under the table (skipped families etc.).

    Returns:
      Markdown text ending in a newline.
    """
    with_xla = any(row.xla_gmacs is not None for row in rows)
    header = ["family", "variant", "input (TxHxW)", "params (M)", "GMACs", "published GMACs"]
    header += ["rel. diff"] + (["XLA GMACs"] if with_xla else []) + ["source"]
    lines = [
        f"# vkd_jax model zoo ({NUM_CLASSES}-class heads)",
        "",
        "GMACs: multiply-accumulates of one clip at the standard input, fvcore convention "
        "(conv, linear and matmul only; what the X3D/MViT papers call GFLOPs).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for row in rows:
        cells = [
            row.family,
            row.variant,
            "x".join(str(s) for s in row.input_shape),
            f"{row.params / 1e6:.2f}",
            f"{row.gmacs:.2f}",
            "" if row.published_gmacs is None else f"{row.published_gmacs:.2f}",
            # Rounded first so that a tiny negative difference does not print as "-0.0%".
            "" if row.rel_diff is None else f"{round(100 * row.rel_diff, 1) + 0.0:+.1f}%",
        ]
        if with_xla:
            cells.append("" if row.xla_gmacs is None else f"{row.xla_gmacs:.2f}")
        cells.append(row.source)
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="Write the Markdown here (default: stdout).")
    parser.add_argument("--xla", action="store_true", help="Add XLA cost-analysis GMACs.")
    args = parser.parse_args(argv)
    rows, notes = build_rows(xla=args.xla, log=lambda m: print(m, file=sys.stderr, flush=True))
    card = render_markdown(rows, notes)
    if args.out:
        Path(args.out).write_text(card)
    else:
        sys.stdout.write(card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
