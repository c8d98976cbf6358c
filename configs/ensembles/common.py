"""Shared settings of the four teacher-ensemble analyses (docs/ensembles.md).

The analyses are those of Kumar, Kumar, Vineet, Rawat, "A Large-Scale Analysis on
Self-Supervised Video Representation Learning" (2023).

Each analysis is a table of rows; a row is one ensemble of K >= 2 self-supervised
teachers (pretrained on a domain's split with a pretext task, then fine-tuned on
the labelled downstream split) and the student distilled from it. `mode=ensemble`
(vkd_jax.ensemble) runs the chain resumably in one workdir and writes
`<analysis>.md` / `.json` and `<analysis>_cka.png`.

The built-in scale: pretraining on `synthetic_actions/long` (and `long_ood`, another
visual domain), downstream `synthetic_actions/default` with 600 labelled clips
(`train[:12.5%]`), the tiny variants of the zoo, a few hundred steps per stage.
Tune on `validation` (the default here); pass --config.data.eval_split=test only
for the final table. docs/ensembles.md has the paper-scale commands.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

# Each analysis config takes a scale after a colon: `--config configs/ensembles/x.py`
# (the built-in scale) or `--config configs/ensembles/x.py:paper` (docs/ensembles.md).
SCALES = ("builtin", "paper")


def archs(scale: str) -> dict[str, str]:
    """The two architectures of the study at a scale: the light CNN and R(2+1)D.

    The study's light CNN is 3D-ShuffleNet. At the built-in scale its tiny variant does
    not learn the downstream task: trained from scratch on the 600 labelled clips it
    stays near chance on validation while it memorizes its training clips (measured:
    docs/ensembles.md, "The built-in scale"), so X3D (x3d/mini) stands in.
    """
    _check_scale(scale)
    if scale == "paper":
        return {"light_cnn": "shufflenet3d/v2_1.0", "r2plus1d": "r2plus1d/18"}
    return {"light_cnn": "x3d/mini", "r2plus1d": "r2plus1d/tiny"}


def pretraining_domain(scale: str) -> str:
    """The main pretraining data: synthetic_actions/long, or Kinetics-400."""
    return "k400" if scale == "paper" else "long"


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} after the config's colon; one of {SCALES}")


def teacher(
    model: str, task: str, complexity: int = 3, domain: str = "long", split: str = "train"
) -> ml_collections.ConfigDict:
    """One ensemble member (vkd_jax.ensemble validates the keys).

    Args:
      model: zoo family/variant, e.g. "r2plus1d/tiny".
      task: pretext task (rotnet | vcop | prp | rspnet | cvrl | tdl) or "none" (a teacher
        trained on the labelled split from random weights).
      complexity: C1-C3 of rotnet, vcop and prp (3 for the contrastive tasks).
      domain: key of ensemble.domains: the data pretrained on.
      split: TFDS split of that domain (a subset such as "train[:1200]" works).
    """
    return ml_collections.ConfigDict(
        dict(model=model, task=task, complexity=complexity, domain=domain, split=split)
    )


def domain(name: str, builder_config: str = "", root: str = "", annotations: str = "",
           layout: str = "") -> ml_collections.ConfigDict:  # fmt: skip
    """A pretraining dataset: a TFDS name and builder config, or (name="video_folder") a
    folder of videos with its root, annotations and layout (docs/datasets.md)."""
    return ml_collections.ConfigDict(
        dict(name=name, builder_config=builder_config, root=root, annotations=annotations,
             layout=layout)
    )  # fmt: skip


def row(title: str, student: str, **teachers: ml_collections.ConfigDict):
    """One table row: its title, the student (family/variant) and its named teachers."""
    return ml_collections.ConfigDict(
        dict(title=title, student=student, teachers=ml_collections.ConfigDict(teachers))
    )


def base(analysis: str, scale: str = "builtin") -> ml_collections.ConfigDict:
    _check_scale(scale)
    c = default.get_config()
    c.mode = "ensemble"
    c.teachers = ml_collections.ConfigDict()  # The ensembles name their own teachers.
    c.student = default.model_spec("shufflenet3d", "tiny")  # Unused: each row names its student.
    # Downstream: 600 labelled clips of synthetic_actions/default; tune on validation.
    c.data.train_split = "train[:12.5%]"
    c.data.eval_split = "validation"
    c.train.num_steps = 150  # Each student's steps.
    c.train.checkpoint_every = 150
    # The study's distillation: cross-entropy plus KD from the uniform average of the
    # teachers' softened probabilities (set teacher_weighting="datw" or
    # ensemble_space="logits" to compare). No SDD or RKD (dual-teacher terms).
    lo = c.loss
    lo.kd_teachers = ()  # Set per row to the row's teachers.
    lo.kd_weight = 1.0  # The study's (configs/default.py's 2 was chosen for dual-teacher KD).
    lo.teacher_weighting = "uniform"
    lo.ensemble_space = "probs"
    lo.sdd_weight = 0.0
    lo.rkd_distance_weight = 0.0
    lo.rkd_angle_weight = 0.0
    c.experiment.run_cka = False  # (mode=experiment only.)

    c.ensemble = e = ml_collections.ConfigDict()
    # subset_size | task_complexity | ood_teachers | task_categories: the table's title,
    # the study's inference tested, and the file names (<analysis>.md/.json/_cka.png).
    e.analysis = analysis
    e.seeds = (0, 1)  # Seeds of the students (and scratch students); teachers use c.seed.
    # Where teachers are trained; "" = <workdir>/teachers. A shared folder lets the
    # analyses reuse each other's teachers: each records its settings (teacher.json), and
    # a teacher trained with other settings is an error, never silently reused.
    e.teacher_dir = ""
    e.finetune_steps = 150  # Teachers' fine-tuning steps on data.train_split.
    # Split the students (distilled and ST) train on; "" = data.train_split. A subset of
    # it gives the students fewer labels than their teachers had.
    e.student_split = ""
    e.pretrain = p = ml_collections.ConfigDict()
    p.steps = 150  # Pretraining steps of each teacher.
    p.batch_size = 16  # Videos per pretraining step (a task's views multiply it).
    p.learning_rate = 5e-3  # Peak learning rate of the pretraining.
    p.frame_stride = 2  # Frame stride of the pretraining clips (as the downstream clips).
    p.eval_split = "validation"  # The domain's split the pretext accuracy is measured on.
    # Pretraining data, by name (teacher(..., domain=...)): long, and long_ood, the same
    # actions in another visual domain (vkd_jax.data.synthetic).
    e.domains = ml_collections.ConfigDict()
    e.domains.long = domain("synthetic_actions", "long")
    e.domains.long_ood = domain("synthetic_actions", "long_ood")
    # Row name -> row(...). Rows and a row's teachers appear (T1, T2, ...) in the natural
    # order of their names (subset_300 before subset_1200): ConfigDict sorts its keys.
    e.rows = ml_collections.ConfigDict()
    e.run_cka = True  # CKA self maps, block scores and the figure of every row.
    # Block-structure score (vkd_jax.cka.block_structure_score): share of layer pairs at
    # least min_gap layers apart whose CKA is >= threshold.
    e.block_threshold = 0.8
    e.block_min_gap = 2
    if scale == "paper":
        _paper_scale(c)
    return c


def _paper_scale(c: ml_collections.ConfigDict) -> None:
    """The study's setting: Kinetics-400 pretraining, UCF101 downstream (split 1), full-size
    models on 16x112x112 clips. Not run here (no such data or hardware on this project's
    machines): the schedules are the pretext papers' usual ones, not tuned."""
    d = c.data
    d.name = "video_folder"
    d.builder_config = ""
    d.data_dir = config_dict.placeholder(str)  # Required: where the TFDS datasets are built.
    d.folder.root = config_dict.placeholder(str)  # Required: the UCF101 video folder.
    d.folder.annotations = config_dict.placeholder(str)  # Required: ucfTrainTestlist/.
    d.folder.layout = "ucf101"  # hmdb51 for the study's second downstream dataset.
    d.folder.fps = 15
    d.train_split = "train"  # All labelled UCF101 training videos of split 1.
    d.eval_split = "test"  # UCF101 has no validation split: hold out train videos to tune.
    d.num_frames, d.frame_stride, d.crop_size = 16, 2, 112
    d.train_scale = (0.2, 1.0)
    d.random_flip = True
    d.eval_num_clips, d.eval_num_crops = 10, 3
    d.cache = False
    c.dtype = "bfloat16"
    c.train.batch_size = 64
    c.train.num_steps = 15_000  # Students: ~100 epochs of UCF101's 9.5k training videos.
    c.train.checkpoint_every = 1000
    c.train.log_every = 100
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 500
    e = c.ensemble
    e.finetune_steps = 15_000
    e.pretrain.steps = 100_000
    e.pretrain.batch_size = 64
    e.pretrain.learning_rate = 1e-3
    e.pretrain.eval_split = "validation"
    e.domains = ml_collections.ConfigDict()
    # Required where a row uses it: the Kinetics-400 folder and its annotation CSVs.
    e.domains.k400 = domain(
        "video_folder", root=config_dict.placeholder(str),
        annotations=config_dict.placeholder(str), layout="kinetics400",
    )  # fmt: skip


def ssv2_domain() -> ml_collections.ConfigDict:
    """Something-Something v2 (the study's out-of-distribution pretraining data)."""
    return domain(
        "video_folder", root=config_dict.placeholder(str),
        annotations=config_dict.placeholder(str), layout="ssv2",
    )  # fmt: skip
