"""The benchmarked code imports without TensorFlow (GPU machines have JAX and PyTorch only)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_and_the_step_import_without_tensorflow_or_clu():
    # A fresh interpreter: this test process has TensorFlow loaded by other tests.
    code = (
        "import runpy, sys\n"
        "sys.argv = ['benchmark.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('tools/benchmark.py', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import vkd_jax.stages, vkd_jax.train_step, vkd_jax.evaluation, vkd_jax.checkpoint\n"
        "import vkd_jax.models, vkd_jax.losses, vkd_jax.sharding, vkd_jax.cka\n"
        "heavy = sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'clu', 'av')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout[-2000:]


def test_forward_benchmark_times_every_model_and_knows_peaks(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench", os.path.join(ROOT, "tools", "benchmark.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 67.0
    assert bench.peak_tflops("cpu", "bfloat16") is None
    bench.main(["--forward", "--batch", "2", "--steps", "1", "--warmup", "0",
                "--set", "data.num_frames=4", "--set", "data.crop_size=16",
                "--convolutions", "auto,native",
                # No process-wide malloc or dispatch setting inside the test session.
                "--allocated-memory"])  # fmt: skip
    out = capsys.readouterr().out
    for model in ("x3d/mini | student", "x3d/mini_m | cnn", "vit/mini | vit"):
        assert f"| {model} | auto |" in out, out
    # One row per convolution form for the CNNs; the ViT has only its patch embedding.
    assert "| x3d/mini | student | native |" in out and "| x3d/mini_m | cnn | native |" in out
    assert "| vit/mini | vit | native |" not in out


def test_benchmark_takes_a_recipe_without_its_data_or_checkpoints():
    """The paper's recipe requires dataset and teacher paths; the benchmark reads neither
    (random weights and clips), so it fills them and the config validates."""
    import importlib.util

    from vkd_jax import config_lib

    spec = importlib.util.spec_from_file_location(
        "bench", os.path.join(ROOT, "tools", "benchmark.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = os.path.join(ROOT, "configs", "dual_teacher", "kinetics400.py")
    config = bench.load_config(path, ["data.crop_size=112"])
    config_lib.validate(config)
    assert config.data.crop_size == 112 and config.teachers.vit.checkpoint == ""
    assert (config.student.name, config.teachers.cnn.variant) == ("x3d", "m")


def test_profile_step_lists_the_backward_ops(tmp_path):
    """tools/profile_step.py times forward and grad and reads its own trace back."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['profile_step.py', '--model', 'x3d', '--variant', 'mini', '--frames', '4',\n"
        f"            '--size', '16', '--batch', '1', '--trace-dir', {str(tmp_path)!r}]\n"
        "runpy.run_path('tools/profile_step.py', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "forward + backward (grad):" in out.stdout
    # Forward and grad alternate; the ratio is the median of the rounds' own ratios.
    assert "medians of 7 alternating rounds" in out.stdout and "grad / forward: " in out.stdout
    # The trainer's host memory setting (vkd_jax.cpu_memory) applied in its own process.
    assert "host memory kept between calls" in out.stdout and "k page faults" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) >= 3, out.stdout  # Op kinds with their time, largest first.
    times = [float(r.split("|")[2]) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0


def test_benchmark_teachers_are_drawn_on_the_host_and_stay_finite():
    """The benchmark's random teachers cost no compile (the trainer restores its teachers
    without one) and keep each teacher family's forward finite."""
    import importlib.util

    import jax
    import jax.numpy as jnp
    import numpy as np

    from vkd_jax import models

    spec = importlib.util.spec_from_file_location(
        "bench", os.path.join(ROOT, "tools", "benchmark.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    video = jnp.ones((2, 4, 16, 16, 3), jnp.float32)
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event)
    leaves = jax.tree_util.tree_leaves
    for name, variant in (("x3d", "mini_m"), ("vit", "mini"), ("mvit", "tiny")):
        model = models.get_model(name, variant=variant, num_classes=5, input_size=(4, 16, 16))
        init = lambda r, m=model: m.init(r, video, train=False)
        abstract = jax.eval_shape(init, jax.random.key(0))
        compiles.clear()
        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            values = bench.host_random(abstract, seed=0)
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
        assert not [e for e in compiles if "backend_compile" in e], (name, compiles)
        assert jax.tree_util.tree_structure(values) == jax.tree_util.tree_structure(abstract)
        for got, want in zip(leaves(values), leaves(abstract)):
            assert isinstance(got, np.ndarray), name
            assert (got.shape, got.dtype) == (want.shape, want.dtype), name
        logits, _ = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(values, video)
        assert np.isfinite(np.asarray(logits)).all() and np.abs(np.asarray(logits)).max() > 0, name
