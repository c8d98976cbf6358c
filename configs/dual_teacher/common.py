"""Shared settings of the paper's dual-teacher recipes (X3D-S <- X3D-M + MViTv2-S).

The teachers are Kinetics-400-pretrained models converted from PyTorch with
tools/convert_checkpoint.py and fine-tuned on the target dataset (mode=train);
their directories and the dataset's folders are required: a recipe run without
them stops at once naming the missing key.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def recipe(layout: str, *, num_steps: int, batch_size: int) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.mode = "experiment"
    d = c.data
    d.name = "video_folder"
    d.builder_config = ""
    d.data_dir = config_dict.placeholder(str)  # Required: where the TFDS dataset is built.
    d.folder.root = config_dict.placeholder(str)  # Required: the dataset's video folder.
    d.folder.layout = layout
    d.folder.short_side = 256
    d.train_split = "train"
    d.eval_split = "test"
    # One clip feeds student and both teachers: MViTv2-S's 16x224x224 at stride 4.
    d.num_frames = 16
    d.frame_stride = 4
    d.crop_size = 224
    d.train_scale = (0.08, 1.0)
    d.random_flip = True
    d.eval_num_clips = 5
    d.eval_num_crops = 3
    d.cache = False
    c.student = default.model_spec("x3d", "s")
    c.teachers.cnn = default.model_spec("x3d", "m", config_dict.placeholder(str))
    c.teachers.vit = default.model_spec("mvit", "v2_s", config_dict.placeholder(str))
    c.dtype = "bfloat16"
    # The paper's objective: DATW + SDD + RKD at KD weight 1 (configs/default.py turns the
    # components off for the built-in data, where validation chose so).
    default.paper_objective(c.loss)
    c.loss.kd_weight = 1.0
    c.loss.sdd.grid = (8, 7, 7)
    c.loss.sdd.dim = 256
    c.optim.optimizer = "sgd"
    c.optim.learning_rate = 0.1 * batch_size / 64
    c.optim.warmup_steps = num_steps // 20
    c.optim.weight_decay = 5e-5
    c.experiment.student_learning_rate = 0.0  # The students take optim's SGD schedule too.
    c.train.batch_size = batch_size
    c.train.num_steps = num_steps
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.eval_batch_size = 16
    c.experiment.run_cka = True
    c.cka.num_examples = 2048
    return c
