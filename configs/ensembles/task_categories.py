"""Pretext task categories (Kumar et al. 2023, Table 4): teacher pairs of one architecture from
different pretext tasks, non-contrastive (VCOP + RotNet) and contrastive (CVRL + TDL),
distilled into a student of that architecture, against the student trained without
pretraining (ST). The study's text reports this on R(2+1)D (its table caption says
ShuffleNet); R(2+1)D here.

  python -m vkd_jax.main --config configs/ensembles/task_categories.py \\
      --workdir runs/ensembles/task_categories

docs/ensembles.md has the measured table, time and verdicts; `:paper` after
the file name gives the study's scale (docs/ensembles.md).
"""

from configs.ensembles import common


def get_config(scale: str = "builtin"):
    c = common.base("task_categories", scale)
    arch, pre = common.archs(scale)["r2plus1d"], common.pretraining_domain(scale)
    rows = c.ensemble.rows
    rows.non_contrastive = common.row(
        "Non-contrastive: VCOP + RotNet",
        arch,
        vcop=common.teacher(arch, "vcop", 3, domain=pre),
        rotnet=common.teacher(arch, "rotnet", 3, domain=pre),
    )
    rows.contrastive = common.row(
        "Contrastive: CVRL + TDL",
        arch,
        cvrl=common.teacher(arch, "cvrl", domain=pre),
        tdl=common.teacher(arch, "tdl", domain=pre),
    )
    return c
