"""The shared reporting module: summaries, the paired t-interval and the verdict rule."""

import json
import math

import numpy as np
import pytest

from vkd_jax import reporting


def test_mean_std_is_the_sample_std():
    assert reporting.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert reporting.mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        reporting.mean_std([])


@pytest.mark.parametrize(
    "dof, value",
    # Student's t 97.5% quantiles as printed in statistics tables.
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)],
)
def test_t_quantile_matches_the_table(dof, value):
    assert reporting.t_quantile(0.975, dof) == pytest.approx(value, abs=1e-4)


def test_paired_interval_and_verdicts():
    # d = (1, 2, 3): mean 2, std 1, half-width 4.3027 / sqrt(3) = 2.4842 -> contains 0.
    c = reporting.paired_comparison([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (c.mean, c.std, c.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert c.low == pytest.approx(2.0 - 2.48418, abs=1e-4)
    assert c.high == pytest.approx(2.0 + 2.48418, abs=1e-4)
    assert c.verdict == reporting.NOT_SHOWN
    assert reporting.paired_comparison([3, 4, 5], [0, 0, 0]).verdict == reporting.HOLDS
    assert reporting.paired_comparison([0, 0, 0], [3, 4, 5]).verdict == reporting.OPPOSITE
    # One number on the b side (a teacher trained once) is compared with every seed.
    c = reporting.paired_comparison([0.5, 0.6], 0.3)
    assert c.differences == pytest.approx((0.2, 0.3))


def test_pairing_resolves_what_unpaired_spreads_hide():
    # Seeds move both rows together (std 10 each) but a is 1 above b on every seed.
    a, b = [50.0, 60.0, 70.0], [49.0, 59.0, 69.0]
    c = reporting.paired_comparison(a, b)
    assert c.std == 0.0 and c.low == pytest.approx(1.0) and c.verdict == reporting.HOLDS
    # Reversing the order of one side breaks the pairing and the verdict.
    assert reporting.paired_comparison(a, b[::-1]).verdict == reporting.NOT_SHOWN


def test_one_seed_gives_no_interval_and_no_verdict():
    c = reporting.paired_comparison([0.9], [0.1])
    assert math.isnan(c.low) and math.isnan(c.high) and c.verdict == reporting.NOT_SHOWN
    assert "no interval" in reporting.fmt_comparison(c)
    with pytest.raises(ValueError, match="same seeds"):
        reporting.paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="level"):
        reporting.paired_comparison([1, 2], [0, 0], level=1.5)


def test_writers(tmp_path):
    assert reporting.fmt_mean_std([0.5, 0.52, 0.54]) == "52.0 ± 2.0"
    assert reporting.fmt_mean_std([0.5]) == "50.0"
    c = reporting.paired_comparison([3, 4, 5], [0, 0, 0])
    assert reporting.fmt_comparison(c) == "+4.0 [+1.5, +6.5]"
    assert reporting.fmt_comparison(c.to_dict()) == "+4.0 [+1.5, +6.5]"
    lines = reporting.markdown_table(("a", "b"), [(1, "x"), (2, "y")])
    assert lines == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]
    with pytest.raises(ValueError, match="2 cells"):
        reporting.markdown_table(("a", "b"), [(1,)])
    reporting.write_report(str(tmp_path), "t", {"c": c.to_dict(), "x": np.float64(1)}, "# t\n")
    assert json.loads((tmp_path / "t.json").read_text())["c"]["verdict"] == reporting.HOLDS
    assert (tmp_path / "t.md").read_text() == "# t\n"


def test_every_ablation_row_has_a_title_and_gives_a_valid_objective():
    import ml_collections

    from vkd_jax import config_lib, experiment

    assert set(experiment.ABLATION_TITLES) == set(experiment.ABLATIONS)
    for name, override in experiment.ABLATIONS.items():
        config = config_lib.default_config()
        config.loss.update(override)
        config.loss.teacher_weights = (0.57, 0.43)
        config_lib.validate(config)
        assert ml_collections.FrozenConfigDict(config.loss).teacher_weighting, name
    assert experiment.ABLATIONS["ca_mkd"]["datw"]["place"] == "per_teacher"


def test_the_ablation_datw_variant_names_real_keys_with_their_types():
    from vkd_jax import config_lib, experiment

    datw = config_lib.default_config().loss.datw
    assert experiment.parse_datw_variant("", datw) == {}
    got = experiment.parse_datw_variant("confidence_temperature=1; discrepancy=js", datw)
    assert got == {"confidence_temperature": 1.0, "discrepancy": "js"}
    for bad in ("temperature=1.0", "discrepancy=1.0", "standardize"):
        with pytest.raises(ValueError, match="ablation.datw"):
            experiment.parse_datw_variant(bad, datw)
