"""Dual-teacher distillation on hmdb51: X3D-S student, X3D-M and MViTv2-S teachers.

Prepare the dataset (docs/datasets.md) and the teachers (docs/models.md, "Bring
pretrained PyTorch teachers"), then:

  python -m vkd_jax.main --config configs/dual_teacher/hmdb51.py --workdir runs/hmdb51 \
    --config.data.folder.root=/data/hmdb51 --config.data.data_dir=/data/tfds \
    --config.teachers.cnn.checkpoint=teachers/x3d_m_hmdb51 \
    --config.teachers.vit.checkpoint=teachers/mvit_v2_s_hmdb51

Sized for an accelerator (bfloat16, batch 64); not run in this repository's CI.
"""

from configs.dual_teacher import common


def get_config():
    return common.recipe("hmdb51", num_steps=15000, batch_size=64)
