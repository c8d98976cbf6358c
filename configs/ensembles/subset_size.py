"""Pretraining subset size (Kumar et al. 2023, Table 1): RSPNet teachers of two architectures, the
light CNN (T1) and R(2+1)D (T2), pretrained on subsets of growing size of the
pretraining data, fine-tuned on the labelled downstream split and distilled into a
student of the light CNN (3D-ShuffleNet in the study; X3D at the built-in scale,
common.archs says why). Subsets: the study's 10k, 30k, 50k and 100k Kinetics-400 videos
(`:paper`); 300, 1200 and 4800 videos of `synthetic_actions/long` here (a 1:16 span).

  python -m vkd_jax.main --config configs/ensembles/subset_size.py \\
      --workdir runs/ensembles/subset_size
"""

from configs.ensembles import common

SUBSETS = {"builtin": (300, 1200, 4800), "paper": (10_000, 30_000, 50_000, 100_000)}


def get_config(scale: str = "builtin"):
    c = common.base("subset_size", scale)
    models, pre = common.archs(scale), common.pretraining_domain(scale)
    for n in SUBSETS[scale]:
        split = f"train[:{n}]"
        c.ensemble.rows[f"subset_{n}"] = common.row(
            f"{n} videos",
            models["light_cnn"],
            t1_light_cnn=common.teacher(models["light_cnn"], "rspnet", 3, pre, split),
            t2_r2plus1d=common.teacher(models["r2plus1d"], "rspnet", 3, pre, split),
        )
    return c
