"""Out-of-distribution teachers (Kumar et al. 2023, Table 3): R(2+1)D teachers pretrained with one
pretext task on two different domains (the study: Kinetics-400 and SSv2; here
`synthetic_actions/long` and `long_ood`, the same 12 actions with diamond actors,
checkerboard backgrounds, more distractors and a panning camera), both fine-tuned on the
same downstream split and distilled into an R(2+1)D student; for RotNet and VCOP.

  python -m vkd_jax.main --config configs/ensembles/ood_teachers.py \\
      --workdir runs/ensembles/ood_teachers
"""

from configs.ensembles import common


def get_config(scale: str = "builtin"):
    c = common.base("ood_teachers", scale)
    arch = common.archs(scale)["r2plus1d"]
    if scale == "paper":
        c.ensemble.domains.ssv2 = common.ssv2_domain()
        domains = ("k400", "ssv2")
    else:
        domains = ("long", "long_ood")
    for task, title in (("rotnet", "RotNet C3"), ("vcop", "VCOP C3")):
        c.ensemble.rows[task] = common.row(
            title,
            arch,
            **{d: common.teacher(arch, task, 3, domain=d) for d in domains},
        )
    return c
