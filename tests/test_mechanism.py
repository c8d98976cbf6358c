"""The training history file and the distillation mechanism figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vkd_jax import mechanism


def _history(steps=(10, 20, 30, 40)):
    points = []
    for i, step in enumerate(steps):
        points.append(
            {
                "step": step,
                "ce": 2.0 - 0.1 * i,
                "kd": 1.0 - 0.1 * i,
                "sdd": 0.5,
                "datw_weight/cnn": 0.6 + 0.05 * i,
                "datw_weight/vit": 0.4 - 0.05 * i,
                "datw_confidence/cnn": 0.3,
                "datw_confidence/vit": 0.1,
                "datw_discrepancy/cnn": 0.2,
                "datw_discrepancy/vit": 0.4,
                "datw_corr_confidence/cnn": 0.5,
                "datw_corr_confidence/vit": 0.5,
                "datw_corr_discrepancy/cnn": -0.2,
                "datw_corr_discrepancy/vit": -0.2,
            }
        )
    return points


def test_history_keeps_the_last_point_of_a_replayed_step(tmp_path):
    # A resumed stage replays the steps after its last checkpoint and logs them again.
    path = tmp_path / mechanism.HISTORY_FILE
    lines = [{"step": 25, "loss": 2.0}, {"step": 50, "loss": 1.5}, {"step": 50, "loss": 1.4},
             {"step": 75, "loss": 1.2}]  # fmt: skip
    path.write_text("".join(json.dumps(p) + "\n" for p in lines))
    history = mechanism.read_history(str(tmp_path))
    assert [p["step"] for p in history] == [25, 50, 75]
    assert history[1]["loss"] == 1.4
    assert mechanism.read_history(str(tmp_path / "absent")) == []


def test_summary_averages_the_last_half_per_teacher():
    summary = mechanism.summarize(_history())
    assert set(summary) == {"cnn", "vit"}
    assert summary["cnn"]["weight"] == pytest.approx(np.mean([0.7, 0.75]))
    assert summary["vit"]["discrepancy"] == pytest.approx(0.4)
    assert summary["cnn"]["corr_discrepancy"] == pytest.approx(-0.2)


def test_plot_writes_a_png_and_skips_supervised_stages(tmp_path):
    path = str(tmp_path / "m.png")
    assert mechanism.plot(_history(), path, title="t") == path
    with Image.open(path) as image:
        assert image.size[0] > 500 and image.size[1] > 400
    # Uniform weighting logs no correlations; the figure is still drawn.
    uniform = [{k: v for k, v in p.items() if "corr" not in k} for p in _history()]
    assert mechanism.plot(uniform, str(tmp_path / "u.png")) is not None
    # A supervised stage has no teacher metrics: no figure.
    assert mechanism.plot([{"step": 1, "ce": 2.0}], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()
