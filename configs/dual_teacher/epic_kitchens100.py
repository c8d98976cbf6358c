"""Dual-teacher distillation on epic_kitchens100: X3D-S student, X3D-M and MViTv2-S teachers.

Prepare the dataset (docs/datasets.md) and the teachers (docs/models.md, "Bring
pretrained PyTorch teachers"), then:

  python -m vkd_jax.main --config configs/dual_teacher/epic_kitchens100.py --workdir runs/epic \
    --config.data.folder.root=/data/epic_kitchens100 --config.data.data_dir=/data/tfds \
    --config.teachers.cnn.checkpoint=teachers/x3d_m_epic_kitchens100 \
    --config.teachers.vit.checkpoint=teachers/mvit_v2_s_epic_kitchens100

Sized for an accelerator (bfloat16, batch 128); not run in this repository's CI.
"""

from configs.dual_teacher import common


def get_config():
    c = common.recipe("epic_kitchens100", num_steps=60000, batch_size=128)
    c.data.eval_split = "validation"  # The layout has train and validation splits.
    return c
