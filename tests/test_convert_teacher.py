"""A PyTorch checkpoint, converted by tools/convert_checkpoint.py, serves as a teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch_compat
from conftest import tiny_config

from vkd_jax import checkpoint, train
from vkd_jax.models import x3d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_tiny_x3d(num_classes: int):
    """pytorchvideo's X3D with our tiny_m hyperparameters and random weights."""
    torch = torch_compat.import_torch()
    torch_compat.import_pytorchvideo_hub()
    from pytorchvideo.models.x3d import create_x3d

    hp = x3d.VARIANTS["tiny_m"]
    torch.manual_seed(0)
    return torch, create_x3d(
        input_clip_length=4,
        input_crop_size=32,  # Only sizes pytorchvideo's fixed head pool (no parameters).
        model_num_class=num_classes,
        width_factor=hp["width_factor"],
        depth_factor=hp["depth_factor"],
        head_dim_out=hp["head_dim_out"],
        head_activation=None,
    )


def test_converted_teacher_distills_a_student(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    torch, model = _torch_tiny_x3d(num_classes=12)
    src = tmp_path / "x3d_tiny_m.pth"
    # The usual wrappers: {"model_state": {"module.<key>": tensor}}.
    torch.save({"model_state": {f"module.{k}": v for k, v in model.state_dict().items()}}, src)
    dst = tmp_path / "teacher"
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_checkpoint.py"),
            "--arch",
            "x3d_tiny_m",
            "--src",
            str(src),
            "--dst",
            str(dst),
            "--num-frames",
            "4",
            "--crop-size",
            "16",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((dst / checkpoint.METADATA_FILE).read_text())
    assert (meta["name"], meta["variant"], meta["num_classes"]) == ("x3d", "tiny_m", 12)

    config.teachers.cnn.checkpoint = str(dst)
    loss = config.loss
    loss.kd_teachers = ("cnn",)
    loss.sdd_weight = 0.0
    loss.rkd_distance_weight = 0.0
    loss.rkd_angle_weight = 0.0
    loss.sdd.adapter_weight = 1.0  # Feature KD from the converted CNN teacher, too.
    config.train.num_steps = 2
    summary = train.run(
        config,
        train.Stage("distill", str(tmp_path / "d"), config.student, loss, 2, dict(config.teachers)),
    )
    assert summary["num_examples"] > 0


def test_wrong_architecture_and_class_count_are_named(tmp_path):
    torch, model = _torch_tiny_x3d(num_classes=12)
    src = tmp_path / "m.pth"
    torch.save(model.state_dict(), src)
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_checkpoint.py"),
            "--arch",
            "x3d_tiny_m",
            "--src",
            str(src),
            "--dst",
            str(tmp_path / "d"),
            "--num-classes",
            "400",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode != 0 and "400" in out.stderr and "12" in out.stderr
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_checkpoint.py"),
            "--arch",
            "resnet50",
            "--src",
            str(src),
            "--dst",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode != 0 and "x3d_m" in out.stderr
    assert not (tmp_path / "d").exists()


def test_missing_checkpoint_file_is_named(tmp_path):
    pytest.importorskip("torch", reason="torch not installed (pip install '.[torch]')")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_checkpoint.py"),
            "--arch",
            "x3d_m",
            "--src",
            str(tmp_path / "none.pth"),
            "--dst",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode != 0 and "none.pth" in out.stderr
