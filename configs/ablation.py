"""Ablation of the dual-teacher objective on `synthetic_actions`, over 3 seeds.

Rows: student from scratch, KD from the CNN teacher, KD from the ViT teacher,
dual teacher with uniform weights, + DATW, + DATW + SDD, + DATW + SDD + RKD.
The teachers are trained once and shared; each row is a config override of
`config.loss` (see vkd_jax.experiment.ABLATIONS). Writes `ablation.md` (mean
± std of top-1 over seeds) and `ablation.json` into the workdir.

Run (reusing the teachers of a finished default experiment; without the two
checkpoint flags the teachers are trained in the workdir first):
  python -m vkd_jax.main --config configs/ablation.py --workdir runs/ablation \
    --config.teachers.cnn.checkpoint=runs/default/teacher_cnn/model \
    --config.teachers.vit.checkpoint=runs/default/teacher_vit/model
Cost: 7 rows x 3 seeds student stages of configs/default.py. Writes per-claim
verdicts of the dual-teacher paper next to the table. The rows' settings are the ones
the validation split chose (docs/science.md: the students' learning rate 2e-2 and KD
weight 2 from configs/default.py, DATW with T_c = 1 and the Jensen-Shannon
discrepancy); docs/science.md has the final 5-seed table with the controls and peers
and its command. Tune with --config.data.eval_split=validation; the test split is for
the final table only.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.mode = "ablation"
    # The rows switch parts of the paper's objective off, so it is the starting point
    # (configs/default.py runs uniform dual KD, the best row at this scale).
    default.paper_objective(c.loss)
    c.experiment.run_cka = False
    c.ablation = ml_collections.ConfigDict()
    c.ablation.seeds = (0, 1, 2)  # One student run per seed and row.
    # Rows of the table, in order (keys of vkd_jax.experiment.ABLATIONS).
    c.ablation.variants = (
        "scratch", "kd_cnn", "kd_vit", "uniform_dual", "datw", "datw_sdd", "datw_sdd_rkd",
    )  # fmt: skip
    # Folders searched for finished student stages recorded with a row's exact settings
    # (e.g. tools/screen.py's workdirs): such a stage is linked in and evaluated on
    # data.eval_split instead of being trained again. () = train every stage here.
    c.ablation.reuse_from = ()
    # Teacher weights of the "fixed" row only (e.g. DATW's mean weights); () = the row
    # takes loss.teacher_weights.
    c.ablation.fixed_weights = ()
    # The DATW variant of the DATW rows (datw, datw_sdd, datw_sdd_rkd) only, as
    # "key=value; ..." over loss.datw's keys (e.g. "confidence_temperature=1.0;
    # discrepancy='js'"); "" = loss.datw as it is. The other rows keep their settings.
    c.ablation.datw = "confidence_temperature=1.0; discrepancy='js'"  # Validation's choice.
    return c
