"""The embedded default: the whole dual-teacher experiment on `synthetic_actions`.

Trains a CNN teacher (X3D-style) and a ViT teacher (a plain video ViT) on the
whole train split, a student from scratch on a labelled subset, then distills the
student on the same subset from both teachers, evaluates every model and writes CKA
maps, all on a laptop CPU. The distillation is what the validation split chose
(docs/science.md): uniform dual-teacher KD at KD weight 2 and the students' learning
rate 2e-2. DATW, SDD and RKD are implemented and tested but off here, because at this
scale none of them was shown to help over 10 paired seeds;
`paper_objective` below (and configs/ablation.py, configs/dual_teacher/) turns them on.

Run:
  python -m vkd_jax.main --config configs/default.py --workdir runs/default

Cost: minutes on a laptop CPU, building the dataset on first use included
(docs/results.md has the measured time and the results).

Every key the code reads is declared here with a comment; other configs
import this one and override. The config is locked: a misspelled key fails.
"""

import ml_collections


def model_spec(
    name: str,
    variant: str,
    checkpoint: str = "",
    num_steps: int = 0,
    learning_rate: float = 0.0,
) -> ml_collections.ConfigDict:
    """A model entry: zoo family, variant and (for teachers) a checkpoint and schedule."""
    spec = ml_collections.ConfigDict()
    spec.name = name  # Family in vkd_jax.models (x3d, mvit, r2plus1d, shufflenet3d, vit).
    spec.variant = variant  # Variant of the family (e.g. "s", "v2_s", "tiny").
    # Checkpoint directory (vkd_jax or converted from PyTorch). For teachers in
    # mode=experiment, "" means "the teacher trained in this workdir".
    spec.checkpoint = checkpoint
    # When mode=experiment/ablation trains this teacher: its steps (0 =
    # experiment.teacher_num_steps) and peak learning rate (0 = optim.learning_rate).
    spec.num_steps = num_steps
    spec.learning_rate = learning_rate
    return spec


def paper_objective(lo: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turns the dual-teacher paper's components on in a loss section: DATW weighting
    (docs/design.md eqs. D1-D5, with whatever `lo.datw` variant is set), SDD at weight 1
    and RKD at Park et al.'s (1, 2). The KD weight and temperature are left as they are."""
    lo.teacher_weighting = "datw"
    lo.sdd_weight = 1.0
    lo.rkd_distance_weight = 1.0
    lo.rkd_angle_weight = 2.0
    return lo


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # data | train | distill | evaluate | experiment | ablation | cka | pretrain | probe |
    # ensemble (configs/ensembles/)
    c.mode = "experiment"
    c.seed = 0  # Seeds parameters, data order, augmentation and dropout.
    # A stage's folder records the settings that shape its model (config.json; the keys
    # vkd_jax.rundir.NOT_SHAPING lists may change freely). Resuming or skipping it with
    # other settings stops the run, unless this is True: then the run goes on with the new
    # ones and the change is recorded in the stage's config_changes.json.
    c.allow_config_change = False

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    d.name = "synthetic_actions"  # TFDS dataset name (synthetic_actions, video_folder, ucf101...).
    d.builder_config = "default"  # TFDS builder config; "" for the builder's default.
    d.data_dir = ""  # TFDS data_dir; "" = TFDS's default location.
    d.train_split = "train"  # TFDS split string; subsets like "train[:10000]" work.
    d.eval_split = "test"  # Split evaluated and used for CKA maps.
    d.video_key = "video"  # Feature holding the uint8 (T, H, W, 3) video.
    d.label_key = "label"  # Feature holding the integer class label.
    d.num_frames = 8  # Frames per clip fed to the models.
    d.frame_stride = 2  # Temporal stride between sampled frames.
    d.crop_size = 32  # Spatial size of the (square) model input.
    # Random-resized-crop area range (fraction of the frame). The whole frame here: a
    # 0.6-area crop can cut away one of two far-apart actors (docs/results.md,
    # "Why the tiny models learned slowly").
    d.train_scale = (1.0, 1.0)
    d.train_aspect_ratio = (0.75, 1.333)  # Random-resized-crop aspect-ratio range.
    # Horizontal flips. Off for synthetic_actions: its left/right classes would swap.
    d.random_flip = False
    d.mean = (0.45, 0.45, 0.45)  # Per-channel mean of [0, 1] pixels.
    d.std = (0.225, 0.225, 0.225)  # Per-channel std of [0, 1] pixels.
    d.eval_num_clips = 2  # Uniformly spaced temporal clips per test video.
    d.eval_num_crops = 1  # Spatial crops per clip (1: center, 3: left/center/right).
    d.shuffle_buffer = 2048  # Examples in the shuffle buffer.
    # Cache decoded examples in memory (small datasets only); False decodes only
    # each clip's frames of videos stored as JPEG/PNG frames.
    d.cache = True
    d.prefetch = 2  # Batches prefetched to the device.
    # Real videos (name="video_folder"): see docs/datasets.md for each dataset's layout.
    d.folder = f = ml_collections.ConfigDict()
    f.root = ""  # Folder holding the videos.
    f.annotations = ""  # Annotation/split files folder or file ("" = root).
    f.layout = "generic"  # generic | ucf101 | hmdb51 | kinetics400 | ssv2 | epic_kitchens100.
    f.split = 1  # Official split number (UCF101 1-3, HMDB51 1-3).
    f.short_side = 128  # Frames resized so the short side is this (0 = keep).
    f.fps = 0.0  # Frames resampled to this rate (0 = keep the source rate).
    f.max_frames = 0  # First frames kept per video (0 = all).
    f.subset = 0  # Seeded class-balanced subset of N training videos (0 = all).
    f.seed = 0  # Seed of `subset` and of the generic layout's 80/20 split.
    f.encoding = "jpeg"  # Stored frame encoding: jpeg | png (lossless, ~5x larger).
    f.num_workers = 2  # Decoding worker processes.
    f.name = ""  # Name of the built dataset version ("" = derived from the settings).

    # --------------------------------------------------------------- models
    # The CPU models (docs/results.md, "Why the tiny models learned slowly", says why).
    c.student = model_spec("x3d", "mini")  # The model distilled (and trained from scratch).
    c.teachers = ml_collections.ConfigDict()  # Name -> teacher model entry.
    # Structurally similar CNN teacher (~4x the student's parameters).
    c.teachers.cnn = model_spec("x3d", "mini_m", num_steps=800)
    # Heterogeneous ViT teacher: a plain video ViT (15 points above mvit/tiny at 1,500
    # steps on validation, at half its step time); it needs more steps than the CNN.
    c.teachers.vit = model_spec("vit", "mini", num_steps=1500, learning_rate=2e-3)
    c.dtype = "float32"  # Compute dtype: float32 or bfloat16 (parameters stay float32).
    # JAX's persistent compilation cache ("" = off): a later run of the same model and
    # shapes loads its compiled programs instead of compiling again (on a GPU, XLA's
    # autotuning too). Compiles of at least a second are stored. VKD_COMPILATION_CACHE in
    # the environment overrides it (e.g. a shared disk on a cluster).
    c.compilation_cache = "~/.cache/vkd_jax/jax"

    # ---------------------------------------------------------------- loss
    # L = ce * CE + kd * (DATW or uniform KD) + sdd * SDD + rkd_d * RKD-D + rkd_a * RKD-A
    #     + feature_kd * FitNets. A weight of 0 switches its term off.
    c.loss = lo = ml_collections.ConfigDict()
    lo.ce_weight = 1.0  # Cross-entropy with the labels.
    lo.label_smoothing = 0.0  # Label smoothing of the cross-entropy.
    # Logit distillation from the teachers in kd_teachers. 2 chosen on validation for
    # uniform dual KD (docs/science.md, "KD settings"; the paper's recipes keep 1).
    lo.kd_weight = 2.0
    lo.kd_teachers = ("cnn", "vit")  # Teachers whose logits form the soft target.
    lo.temperature = 4.0  # Softmax temperature T of the distillation (loss scaled by T^2).
    # datw (adaptive per sample) | uniform (ablation baseline) | the controls and peers of
    # docs/design.md: fixed (teacher_weights) | oracle (per clip, the teachers that are
    # right; uses labels, an upper bound) | ca_mkd (Zhang et al., ICASSP 2022) | ebkd.
    # Uniform, not DATW: DATW is not shown to help at this scale, +0.7 points [-0.6, +2.1]
    # against uniform weights over 16 paired seeds (docs/science.md); paper_objective
    # sets datw.
    lo.teacher_weighting = "uniform"
    lo.teacher_weights = ()  # teacher_weighting=fixed: one weight per kd_teacher (normalized).
    # What the kd_teachers' weights average: logits (softmax(sum_k w_k z_k / T), the DATW
    # target, docs/design.md eq. K3) | probs (sum_k w_k softmax(z_k / T), eq. K4, the
    # teacher-ensemble study's setting).
    lo.ensemble_space = "logits"
    lo.datw = ml_collections.ConfigDict()
    lo.datw.confidence_weight = 1.0  # a in e_k = a * c_k + b * d_k.
    lo.datw.discrepancy_weight = 1.0  # b in e_k = a * c_k + b * d_k.
    lo.datw.weight_temperature = 0.5  # gamma in w = softmax(e / gamma).
    lo.datw.combine = "sum"  # sum: a*c + b*d; product: c^a * d^b.
    # The defaults below are the original DATW (docs/design.md eqs. D1-D5); the other
    # values are the variants the issue asks to test, for validation to choose.
    lo.datw.confidence = "entropy"  # entropy: 1 - H/log C | max_prob: max softmax.
    lo.datw.confidence_temperature = 0.0  # T_c of the confidence and EBKD's entropy; 0 = T.
    # cosine: 1 - cos(z_k, s) on raw logits | centered_cosine (shift-invariant) | js:
    # Jensen-Shannon of softmax(z_k / T) and softmax(s / T), divided by log 2.
    lo.datw.discrepancy = "cosine"
    lo.datw.standardize = False  # Batch-standardize c and d before e = a c + b d.
    # Where any teacher weighting acts: mix (one target from sum_k w_k z_k) | per_teacher
    # (sum_k w_k KD(s, z_k), CA-MKD's place).
    lo.datw.place = "mix"
    # Structure discrepancy distillation (the ViT - CNN residual). 0 (off) here: -0.5
    # points [-1.8, +0.8] on top of DATW over 28 seeds, not shown to help, for a branch
    # and a ridge fit (docs/science.md); paper_objective sets 1.
    lo.sdd_weight = 0.0
    lo.sdd = ml_collections.ConfigDict()
    lo.sdd.vit_teacher = "vit"  # Teacher giving f_vit.
    lo.sdd.cnn_teacher = "cnn"  # Teacher giving f_cnn.
    lo.sdd.vit_feature = "last_stage"  # Feature key of f_vit ("last_stage" = highest stageN).
    lo.sdd.cnn_feature = "last_stage"  # Feature key of f_cnn.
    lo.sdd.student_feature = "last_stage"  # Student feature the branch reads.
    lo.sdd.grid = (2, 2, 2)  # Common (T', H', W') grid of the residual.
    # residual: r = (y - x A - b) U with (A, b) fitted by ridge regression of the ViT's on
    # the CNN's pooled features over the stage's train split before the student trains
    # (stored in the stage's folder as sdd_residual_map.npz), U the top-D principal
    # directions of r (docs/design.md eq. S1). random_projections: the earlier
    # phi_vit(f_vit) - phi_cnn(f_cnn) with two unrelated random bases (eq. S1'; not a
    # residual, kept so old runs reproduce).
    lo.sdd.target = "residual"
    lo.sdd.ridge = 1e-3  # lambda of the residual fit, relative to the mean squared error.
    # Width D of the target: the random projections' width; the residual keeps
    # min(D, C_vit) principal directions.
    lo.sdd.dim = 64
    lo.sdd.projection_seed = 0  # Seed of the fixed (non-trainable) random projections.
    lo.sdd.loss_type = "mse"  # mse | smooth_l1 | cosine.
    lo.sdd.adapter_weight = 0.0  # Extra feature KD: student adapter matches phi_cnn(f_cnn).
    # RKD distance and angle losses (Park et al. 2019). Off here: +0.3 points [-1.2, +1.8]
    # over 16 seeds, not shown to help (docs/science.md); paper_objective sets 1, 2.
    lo.rkd_distance_weight = 0.0
    lo.rkd_angle_weight = 0.0
    lo.rkd = ml_collections.ConfigDict()
    lo.rkd.teacher = "vit"  # Teacher whose embeddings give the relations.
    lo.rkd.teacher_feature = "pre_logits"  # Teacher embedding (B, D).
    lo.rkd.student_feature = "pre_logits"  # Student embedding (B, D').
    lo.feature_kd_weight = 0.0  # FitNets feature KD through a trainable adapter.
    lo.feature_kd = ml_collections.ConfigDict()
    lo.feature_kd.teacher = "cnn"  # Teacher whose feature is matched.
    lo.feature_kd.teacher_feature = "last_stage"  # Teacher feature key.
    lo.feature_kd.student_feature = "last_stage"  # Student feature key (adapted to the teacher).

    # ----------------------------------------------------------- optimizer
    c.optim = o = ml_collections.ConfigDict()
    o.optimizer = "adamw"  # adamw | sgd (with momentum).
    # Peak learning rate: the teachers' (and every mode's but the students' of
    # mode=experiment/ablation, which take experiment.student_learning_rate when set).
    o.learning_rate = 5e-3
    o.warmup_steps = 30  # Linear warmup steps before the cosine decay.
    o.min_learning_rate = 0.0  # Learning rate at the end of the cosine decay.
    o.weight_decay = 1e-4  # Decoupled weight decay (adamw) or L2 (sgd).
    o.momentum = 0.9  # SGD momentum.
    o.grad_clip_norm = 1.0  # Global-norm gradient clipping; 0 disables.
    o.grad_accum_steps = 1  # Micro-batches accumulated per update.

    # ------------------------------------------------------------ training
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 32  # Global batch size (split over devices and processes).
    t.num_steps = 300  # Optimizer steps of a train/distill stage.
    t.log_every = 25  # Steps between metric lines / TensorBoard points.
    # Steps between evaluations on data.eval_split during a stage (eval/top1, eval/top5 in
    # TensorBoard and metrics.jsonl; pretraining: eval/pretext_accuracy); 0 = at the end only.
    t.eval_every = 0
    t.checkpoint_every = 100  # Steps between checkpoints.
    t.max_to_keep = 2  # Checkpoints kept.
    t.eval_batch_size = 32  # Videos per evaluation batch (each with all its views).

    # ------------------------------------------------------ mode=train etc.
    c.train_model = "student"  # mode=train/pretrain: "student" or a teacher name.
    # mode=train: start from this model directory (e.g. a converted Kinetics teacher, or a
    # pretraining workdir's model/). Layers whose shape differs (the classifier, for a new
    # class count) start fresh. mode=probe: the model evaluated.
    c.init_checkpoint = ""

    # ---------------------------------------------------------- experiment
    c.experiment = e = ml_collections.ConfigDict()
    e.teacher_num_steps = 400  # Steps of each teacher's supervised training.
    # Split the students (scratch and distilled) train on; "" = data.train_split. A
    # labelled subset gives the students less than the teachers had (the setting of
    # Kumar et al. 2023).
    e.student_train_split = "train[:12.5%]"
    # Peak learning rate of the students' stages (scratch and distilled; mode=experiment,
    # ablation and tools/screen.py); 0 = optim.learning_rate, which the teachers use.
    # 2e-2 chosen on validation: 57.4% against 43.3% at 5e-3 (docs/science.md, "The
    # student's recipe").
    e.student_learning_rate = 2e-2
    e.run_cka = True  # Write layer-by-layer CKA maps at the end.

    # ------------------------------------------------------- mode=pretrain
    # Self-supervised pretraining of config.train_model's architecture on data.train_split
    # (labels unused); docs/pretext.md. train.batch_size counts videos: a task's views
    # (RotNet's K rotations, VCOP's N clips, the contrastive tasks' 2-3 clips) multiply it.
    c.pretext = p = ml_collections.ConfigDict()
    p.task = "rotnet"  # rotnet | vcop | prp (complexities C1-C3) | rspnet | cvrl | tdl.
    # Complexity of rotnet/vcop/prp: rotations 2/3/4, clips 3/4/5, rates {1,2}/{1,2,4}/{1,2,4,8}.
    p.complexity = 3
    p.eval_split = "validation"  # Held-out clips the pretext accuracy is measured on.
    p.dropout_rate = 0.0  # Dropout before the rotnet/prp classifier and in VCOP's head.
    p.vcop = ml_collections.ConfigDict()
    p.vcop.clip_frames = 4  # Frames per sub-clip (the paper: 16).
    p.vcop.clip_stride = 2  # Step between a sub-clip's frames (the paper: 1, contiguous).
    p.vcop.interval = 4  # Frames between consecutive sub-clips (the paper: 8).
    p.vcop.hidden_dim = 512  # Width of the shared pair layer (the paper: 512).
    p.rspnet = ml_collections.ConfigDict()
    p.rspnet.speeds = (1, 2)  # The two playback speeds, in units of data.frame_stride.
    p.rspnet.dim = 128  # Width of the two l2-normalized heads g_a, g_m.
    p.rspnet.temperature = 0.07  # T of both losses.
    p.rspnet.margin = 2.0  # Ranking margin on similarities / T (the authors' 2.0).
    p.rspnet.avid_weight = 1.0  # Weight of the appearance (instance discrimination) loss.
    p.rspnet.rsp_weight = 1.0  # Weight of the relative-speed ranking loss.
    p.rspnet.queue_size = 4096  # Negative keys kept (the paper: 16384; trimmed to batches).
    p.rspnet.momentum = 0.99  # EMA of the key encoder (the paper: 0.999 over ~100k steps).
    p.rspnet.crop_scale = (0.4, 1.0)  # Random-resized-crop area range of every clip.
    p.rspnet.color_jitter = 0.4  # Brightness, contrast, saturation and hue jitter strength.
    p.rspnet.grayscale_prob = 0.2  # Probability of a grayscale clip.
    p.cvrl = ml_collections.ConfigDict()
    p.cvrl.temperature = 0.1  # NT-Xent temperature.
    p.cvrl.hidden_dim = 256  # Width of the projection MLP's hidden layers (the paper: 2048).
    p.cvrl.dim = 128  # Output width of the projection MLP.
    p.cvrl.num_layers = 4  # Dense layers of the projection MLP (3 hidden + output).
    p.cvrl.power = 1.0  # Interval density ∝ 1 - (d / M)^power (1: linearly decreasing).
    p.cvrl.crop_scale = (0.3, 1.0)  # Random-resized-crop area range.
    p.cvrl.aspect_ratio = (0.5, 2.0)  # Random-resized-crop aspect-ratio range.
    # Colour-jitter strength s: brightness/contrast/saturation 0.8s, hue 0.2s. The paper's
    # 1.0 erases what tells synthetic clips apart (the cast's colours; the shapes are the
    # same in every clip): 0.5 chosen on long's validation clips (docs/pretext.md, "On
    # the built-in data", has the measured accuracies).
    p.cvrl.color_jitter = 0.5
    p.cvrl.grayscale_prob = 0.2  # Probability of a grayscale clip.
    p.cvrl.blur_prob = (1.0, 0.1)  # Gaussian-blur probability of (view 1, view 2).
    p.cvrl.solarize_prob = (0.0, 0.2)  # Solarization probability of (view 1, view 2).
    p.tdl = ml_collections.ConfigDict()
    p.tdl.dim = 128  # Width of the l2-normalized head.
    p.tdl.temperature = 0.07  # InfoNCE temperature.
    p.tdl.queue_size = 4096  # Negative keys kept (the authors: 5000 on UCF101).
    p.tdl.momentum = 0.99  # EMA of the key encoder (the authors: 0.999).
    p.tdl.min_gap = 2  # Least distance (frames) between the anchor's and the negative's starts.
    p.tdl.mixup_max = 0.1  # Anchor frames mixed with a static frame, lambda ~ U(0, this).
    # Brightness, contrast, saturation, hue jitter of every clip. Brightness 0.1, not 0.5:
    # in synthetic_actions/long the fading light is what tells two times of a video apart
    # in pooled features, and 0.5 hides it (measured: docs/pretext.md, "On the built-in
    # data").
    p.tdl.color_jitter = (0.1, 0.5, 0.25, 0.5)

    # ---------------------------------------------------------- mode=probe
    # Frozen-backbone evaluation of the model directory in init_checkpoint: a linear
    # classifier on pooled features of data.train_split, top-1 on data.eval_split, and
    # nearest-neighbour retrieval of eval_split clips among train_split clips.
    c.probe = pr = ml_collections.ConfigDict()
    pr.steps = 1000  # Full-batch Adam steps of the linear classifier.
    pr.learning_rate = 1e-2  # Its learning rate.
    pr.weight_decay = 1e-3  # L2 penalty on its weights.
    pr.recall_at = (1, 5, 10)  # k of the retrieval recall@k.
    pr.chunk_size = 1024  # Queries per similarity block (bounds memory on large splits).

    # ----------------------------------------------------------- evaluation
    c.eval = ev = ml_collections.ConfigDict()
    ev.latency_batch_size = 1  # Clips per call when timing the deployed student.
    ev.latency_iters = 20  # Timed calls (after warm-up) for the latency figure.

    # ---------------------------------------------------------- mode=export
    # A model directory as TF SavedModel, LiteRT (float32 and int8) and ONNX, each checked
    # against the Flax model as it is written (vkd_jax.export; docs/deploy.md).
    c.export = x = ml_collections.ConfigDict()
    # Model directory exported; "" = this workdir's distilled student (mode=experiment's
    # student_distill/model).
    x.model = ""
    x.formats = ("saved_model", "tflite", "tflite_int8", "onnx")  # Any subset.
    x.outdir = ""  # Where the artifacts go; "" = <workdir>/export.
    x.batch_size = 1  # Fixed batch of the LiteRT and ONNX models (the SavedModel's is free).
    x.tolerance = 1e-4  # Largest |logit - Flax logit| a float32 artifact may show.
    # Videos of data.eval_split on which every artifact's top-1 is measured next to the
    # Flax model's (multi-view, as evaluation); 0 = none, -1 = the whole split.
    x.eval_videos = -1

    # ------------------------------------------------------------------ CKA
    c.cka = k = ml_collections.ConfigDict()
    k.kernel = "linear"  # linear | rbf.
    k.rbf_threshold = 1.0  # RBF bandwidth = threshold * median distance.
    k.unbiased = True  # Unbiased (U-statistic) minibatch HSIC (Nguyen et al. 2021).
    k.num_examples = 512  # Examples of the eval split the maps are computed on.
    k.batch_size = 64  # Minibatch size of the streaming estimate.

    # ----------------------------------------------------------------- mesh
    c.mesh = m = ml_collections.ConfigDict()
    m.data = -1  # Devices on the data axis; -1 = all.
    return c
