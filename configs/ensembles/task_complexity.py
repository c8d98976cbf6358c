"""Task complexity (Kumar et al. 2023, Table 2): for RotNet, VCOP and PRP, the C1, C2 and C3
teachers of one architecture as one ensemble, distilled into a student of the same
architecture; the light CNN and R(2+1)D each as teacher-and-student architecture
(3D-ShuffleNet in the study; X3D at the built-in scale, common.archs says why).

  python -m vkd_jax.main --config configs/ensembles/task_complexity.py \\
      --workdir runs/ensembles/task_complexity
"""

from configs.ensembles import common

TASKS = {"rotnet": "RotNet", "vcop": "VCOP", "prp": "PRP"}


def get_config(scale: str = "builtin"):
    c = common.base("task_complexity", scale)
    pre = common.pretraining_domain(scale)
    for task, task_title in TASKS.items():
        for arch in common.archs(scale).values():
            family = arch.split("/")[0]
            c.ensemble.rows[f"{task}_{family}"] = common.row(
                f"{task_title}, {family}",
                arch,
                **{f"c{k}": common.teacher(arch, task, k, domain=pre) for k in (1, 2, 3)},
            )
    return c
