"""Step time, throughput and memory of the distillation train step vs. the student alone.

    python tools/benchmark.py --config configs/default.py --batch 32 --steps 20
    python tools/benchmark.py --config configs/default.py --batch 64 \
        --set data.num_frames=16 --set data.crop_size=112

Builds the config's student, teachers (random weights: speed does not depend on
them) and objective, jits the same train step the trainer uses (state donated,
teachers a separate argument, batch sharded over all devices), and times it:
median over ``--steps`` steps after ``--warmup`` steps, with the host blocked
on each step's result. Memory is the device's peak where the runtime reports
it (GPU/TPU), otherwise XLA's buffer estimate for the compiled step (CPU).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import config_lib, models, sharding, stages, train_step  # noqa: E402
from vkd_jax.losses import objective  # noqa: E402


def load_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, _, value = item.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value if isinstance(node[leaf], str) else ast.literal_eval(value)
    return config


def _memory(compiled) -> tuple[float, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak"
    m = compiled.memory_analysis()
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    return total / 2**20, "XLA estimate"


def bench(config, *, batch: int, steps: int, warmup: int, distill: bool) -> dict:
    mesh = sharding.make_mesh(config.mesh.data)
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    t, s = config.data.num_frames, config.data.crop_size
    num_classes = 12
    dtype = stages.compute_dtype(config)
    loss = config.loss if distill else stages.supervised_loss(config.loss)
    loss_cfg = ml_collections.FrozenConfigDict(loss)
    make = lambda spec: models.get_model(
        spec.name, variant=spec.variant, num_classes=num_classes, dtype=dtype, input_size=(t, s, s)
    )
    student = make(config.student)
    names = objective.required_teachers(loss_cfg)
    teachers = {n: make(config.teachers[n]) for n in names}
    video = jnp.zeros((2, t, s, s, 3), jnp.float32)
    teacher_vars = {
        n: jax.jit(lambda r, m=m: m.init(r, video, train=False))(jax.random.key(i))
        for i, (n, m) in enumerate(teachers.items())
    }
    heads = objective.DistillationHeads(loss_cfg=loss_cfg, dtype=dtype)
    tx, schedule = train_step.make_optimizer(config.optim, 1000)
    init = jax.jit(
        lambda r, tv: train_step.init_state(
            rng=r,
            student=student,
            heads=heads,
            teachers=teachers,
            teacher_vars=tv,
            tx=tx,
            video=video,
        ),
        out_shardings=repl,
    )
    teacher_vars = jax.device_put(teacher_vars, repl)
    state = init(jax.random.key(0), teacher_vars)
    step = jax.jit(
        train_step.make_train_step(
            student=student,
            heads=heads,
            teachers=teachers,
            loss_cfg=loss_cfg,
            tx=tx,
            schedule=schedule,
            rng=jax.random.key(1),
            accum_steps=config.optim.grad_accum_steps,
        ),
        in_shardings=(repl, repl, data),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    rng = np.random.default_rng(0)
    batch_arrays = jax.device_put(
        {
            "video": rng.standard_normal((batch, t, s, s, 3), np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
        },
        data,
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher_vars, batch_arrays).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, teacher_vars, batch_arrays)
        jax.block_until_ready(metrics["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert bool(metrics["finite"]), "benchmark step produced a non-finite loss"
    median = float(np.median(times))
    memory, memory_kind = _memory(compiled)
    return {
        "what": "distillation step" if distill else "student alone",
        "teachers": ", ".join(names) or "-",
        "step_ms": 1000 * median,
        "p90_ms": 1000 * float(np.percentile(times, 90)),
        "clips_per_s": batch / median,
        "memory_mib": memory,
        "memory_kind": memory_kind,
        "compile_s": compile_s,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--set", action="append", default=[], help="key=value config override")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    config_lib.validate(config)
    rows = [
        bench(config, batch=args.batch, steps=args.steps, warmup=args.warmup, distill=d)
        for d in (True, False)
    ]
    dev = jax.devices()[0]
    t, s = config.data.num_frames, config.data.crop_size
    print(
        f"\nvkd_jax train-step benchmark: {args.config} {' '.join(args.set)}\n"
        f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}); host: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}; "
        f"dtype {config.dtype}; clip {t}x{s}x{s}; global batch {args.batch}; "
        f"student {config.student.name}/{config.student.variant}\n"
    )
    print("| step | teachers | median ms | p90 ms | clips/s | memory MiB | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['teachers']} | {r['step_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['clips_per_s']:.1f} | {r['memory_mib']:.0f} ({r['memory_kind']}) | "
            f"{r['compile_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
