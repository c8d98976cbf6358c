"""Dual-teacher distillation on kinetics400: X3D-S student, X3D-M and MViTv2-S teachers.

Prepare the dataset (docs/datasets.md) and the teachers (docs/models.md, "Bring
pretrained PyTorch teachers"), then:

  python -m vkd_jax.main --config configs/dual_teacher/kinetics400.py --workdir runs/kinetics400 \
    --config.data.folder.root=/data/kinetics400 --config.data.data_dir=/data/tfds \
    --config.teachers.cnn.checkpoint=teachers/x3d_m_kinetics400 \
    --config.teachers.vit.checkpoint=teachers/mvit_v2_s_kinetics400

Sized for an accelerator (bfloat16, batch 256); not run in this repository's CI.
"""

from configs.dual_teacher import common


def get_config():
    c = common.recipe("kinetics400", num_steps=150000, batch_size=256)
    c.data.eval_split = "validation"  # The layout has train and validation splits.
    return c
