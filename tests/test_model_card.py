"""Tests of tools/model_card.py on a tiny fake registry (fast, no full-size model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "model_card.py"
_spec = importlib.util.spec_from_file_location("model_card", _PATH)
model_card = importlib.util.module_from_spec(_spec)
sys.modules["model_card"] = model_card  # dataclasses resolve annotations through it.
_spec.loader.exec_module(model_card)


class TinyVideoNet(nn.Module):
    """Conv3D (3 -> 8, 3x3x3, SAME) -> global mean -> Dense; zoo-style outputs."""

    num_classes: int

    @nn.compact
    def __call__(self, video, train: bool = False):
        x = nn.Conv(8, (3, 3, 3), padding="SAME")(video)
        x = nn.Dropout(0.5, deterministic=not train)(x.mean(axis=(1, 2, 3)))
        return nn.Dense(self.num_classes)(x), {"pre_logits": x}


class FakeRegistry:
    """The registry interface of vkd_jax.models with one real and one missing family."""

    def families(self):
        return ["good", "missing"]

    def family_module(self, name):
        if name == "missing":
            raise ModuleNotFoundError("No module named 'fake.missing'")
        return object()

    def variants(self, name):
        return ["big", "small", "tiny"]

    def standard_input(self, name, variant):
        return {"big": (2, 8, 8), "small": (1, 4, 4)}.get(variant)

    def get_model(self, name, *, variant, num_classes):
        return TinyVideoNet(num_classes=num_classes)


# By hand at 400 classes: conv 3*27*8 + 8, dense 8*400 + 400.
PARAMS = 3 * 27 * 8 + 8 + 8 * 400 + 400
# MACs: every conv output does 27 taps x 3 channels; plus the dense layer.
MACS_BIG = 2 * 8 * 8 * 8 * 27 * 3 + 8 * 400
MACS_SMALL = 1 * 4 * 4 * 8 * 27 * 3 + 8 * 400


def test_build_rows_measures_full_size_variants_and_skips_missing_families():
    published = {("good", "big"): (MACS_BIG * 1.25 / 1e9, "Paper, Table 1")}
    rows, notes = model_card.build_rows(FakeRegistry(), published=published)
    assert [(r.family, r.variant, r.input_shape) for r in rows] == [
        ("good", "big", (2, 8, 8)),
        ("good", "small", (1, 4, 4)),
    ]
    assert [r.params for r in rows] == [PARAMS, PARAMS]
    assert rows[0].gmacs == pytest.approx(MACS_BIG / 1e9)
    assert rows[1].gmacs == pytest.approx(MACS_SMALL / 1e9)
    assert rows[0].rel_diff == pytest.approx(1 / 1.25 - 1)  # -20%.
    assert rows[1].rel_diff is None
    assert len(notes) == 1 and notes[0].startswith("missing: skipped")


def test_render_markdown_table():
    published = {("good", "big"): (MACS_BIG * 1.25 / 1e9, "Paper, Table 1")}
    rows, notes = model_card.build_rows(FakeRegistry(), published=published)
    text = model_card.render_markdown(rows, notes)
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == [
        "family",
        "variant",
        "input (TxHxW)",
        "params (M)",
        "GMACs",
        "published GMACs",
        "rel. diff",
        "source",
    ]
    assert table[1] == "|" + "|".join(["---"] * len(header)) + "|"
    big = [c.strip() for c in table[2].strip("|").split("|")]
    assert big == [
        "good",
        "big",
        "2x8x8",
        f"{PARAMS / 1e6:.2f}",
        f"{MACS_BIG / 1e9:.2f}",
        f"{MACS_BIG * 1.25 / 1e9:.2f}",
        "-20.0%",
        "Paper, Table 1",
    ]
    small = [c.strip() for c in table[3].strip("|").split("|")]
    assert small[:3] == ["good", "small", "1x4x4"] and small[5:] == ["", "", ""]
    assert len(table) == 4
    assert lines[-1].startswith("- missing: skipped")


def test_rel_diff_rounding_never_prints_negative_zero():
    row = model_card.Row("f", "v", (1, 1, 1), 1, gmacs=0.9999, published_gmacs=1.0)
    assert "| +0.0% |" in model_card.render_markdown([row])


@pytest.mark.skipif(jnp.zeros(()).devices().pop().platform != "cpu", reason="CPU cost model")
def test_xla_column_and_main_write_the_card(tmp_path, monkeypatch):
    rows, _ = model_card.build_rows(FakeRegistry(), published={}, xla=True)
    # XLA skips padded taps (lower) but adds elementwise ops: same order as the fvcore count.
    assert 0.5 * rows[0].gmacs < rows[0].xla_gmacs < 1.5 * rows[0].gmacs
    assert "| XLA GMACs |" in model_card.render_markdown(rows)

    monkeypatch.setattr(model_card, "models", FakeRegistry())
    out = tmp_path / "card.md"
    assert model_card.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert "| good | big | 2x8x8 |" in text and "XLA GMACs" not in text
