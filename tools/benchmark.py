"""Step time, throughput and memory of the distillation train step vs. the student alone.

    python tools/benchmark.py --config configs/default.py --batch 32 --steps 20
    python tools/benchmark.py --config configs/default.py --batch 64 \
        --set data.num_frames=16 --set data.crop_size=112
    python tools/benchmark.py --forward --torch --batch 16 --set dtype=bfloat16 \
        --set student.name=x3d --set student.variant=s ... (each model's forward alone)

Each row gives the init time (teachers and state), the compile time and the seconds
from process start to its first step done (the first row's: the cold start, with
the persistent compilation cache as configured). ``--convolutions native,cpu`` adds
rows per convolution form (``vkd_jax.models.layers.convolutions``).

``--forward`` times each model's inference forward alone (student and teachers,
jitted, random weights) and reports its MFU: 2 x MACs per clip x clips/s over the
device's bf16 (or fp32) peak, where the card is known. ``--torch`` adds the same
forwards in PyTorch (pytorchvideo X3D, torchvision MViTv2-S / R(2+1)D, eager,
autocast for bfloat16, cudnn.benchmark), same input, and the JAX / PyTorch ratio;
without ``--forward`` it adds the PyTorch distillation step of ``tools/torch_step.py``
(same objective and loss settings; X3D student and teachers, MViTv2-S).
Nothing here imports TensorFlow: GPU machines need only JAX, Flax, Optax, NumPy,
ml-collections (and PyTorch for ``--torch``).

Builds the config's student, teachers (random weights drawn on the host, as the
trainer restores its teachers without compiling; speed does not depend on them) and
objective, jits the same train step the trainer uses (state donated,
teachers a separate argument, batch sharded over all devices), and times it:
median over ``--steps`` steps after ``--warmup`` steps, with the host blocked
on each step's result. Memory is the device's peak where the runtime reports
it (GPU/TPU), otherwise XLA's buffer estimate for the compiled step (CPU).
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()  # Cold start is measured from here (before jax).

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import (  # noqa: E402
    config_lib,
    cpu_memory,
    models,
    residual_fit,
    sharding,
    stages,
    startup,
    train_step,
)
from vkd_jax.losses import objective  # noqa: E402
from vkd_jax.models import layers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.config_cli import load_config  # noqa: E402


def _memory(compiled) -> tuple[float, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak"
    m = compiled.memory_analysis()
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    return total / 2**20, "XLA estimate"


# Dense peak TFLOP/s of accelerators by ``device_kind`` prefix: (bf16, fp32). NVIDIA data
# sheets (SXM, without sparsity); a card not listed gets no MFU.
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "NVIDIA H100": (989.0, 67.0),
    "NVIDIA H200": (989.0, 67.0),
    "NVIDIA A100": (312.0, 19.5),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for prefix, (bf16, fp32) in PEAK_TFLOPS.items():
        if device_kind.startswith(prefix):
            return bf16 if dtype == "bfloat16" else fp32
    return None


def _timed(fn, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def forward_rows(
    config, *, batch: int, steps: int, warmup: int, torch_too: bool, modes=("auto",)
) -> list[dict]:
    """Inference forward of the student and every teacher (JAX, and PyTorch if asked),
    one JAX row per convolution mode (``layers.convolutions``) for convolutional models."""
    from vkd_jax import evaluation

    t, s = config.data.num_frames, config.data.crop_size
    dtype = stages.compute_dtype(config)
    specs = {"student": config.student, **dict(config.teachers)}
    dev = jax.devices()[0]
    peak = peak_tflops(dev.device_kind, config.dtype)
    video = jnp.asarray(np.random.default_rng(0).standard_normal((batch, t, s, s, 3)), dtype)
    rows = []
    for name, spec in specs.items():
        model = models.get_model(spec.name, variant=spec.variant, num_classes=400, dtype=dtype,
                                 input_size=(t, s, s))  # fmt: skip
        init = startup.jit_init(lambda r, m=model: m.init(r, video[:1], train=False))
        variables = init(jax.random.key(0))
        macs = evaluation.count_macs(model, variables, (t, s, s))
        torch_ms = None
        if torch_too:
            try:
                torch_ms = torch_forward_ms(spec, config, batch, steps, warmup)
            except (ImportError, RuntimeError) as e:  # e.g. a torchvision build that won't load
                what = f"{spec.name}/{spec.variant}"
                print(f"PyTorch reference of {what} unavailable: {str(e)[:120]}")
        # The plain ViT's patch embedding is its only convolution (nn.Conv, the same in
        # every mode): one row is enough. MViT pools with depthwise layers.Conv3d.
        convolutional = spec.name in ("x3d", "r2plus1d", "shufflenet3d", "slowfast", "mvit")
        for mode in modes if convolutional else modes[:1]:
            fwd = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)[0])
            t0 = time.perf_counter()
            with layers.convolutions(mode):  # Traced (and so compiled) in this mode.
                compiled = fwd.lower(variables, video).compile()
            compile_s = time.perf_counter() - t0
            run = lambda c=compiled, v=variables: c(v, video).block_until_ready()
            times = _timed(run, steps, warmup)
            row = dict(model=f"{spec.name}/{spec.variant}", role=name, gmacs=macs / 1e9,
                       convolutions=mode, jax_ms=1000 * float(np.median(times)),
                       compile_s=compile_s, torch_ms=torch_ms)  # fmt: skip
            if peak:
                row["mfu"] = 2 * macs * batch / (row["jax_ms"] / 1000) / (peak * 1e12)
            rows.append(row)
    return rows


def torch_forward_ms(spec, config, batch: int, steps: int, warmup: int) -> float | None:
    """Median ms of the PyTorch reference's forward (None: no reference for this model)."""
    import torch

    name = f"{spec.name}/{spec.variant}"
    if spec.name == "x3d" and spec.variant in ("xs", "s", "m", "l"):
        import pytorchvideo.models.hub as hub

        model = getattr(hub, f"x3d_{spec.variant}")(pretrained=False)
        # The hub's head pools with a kernel sized for the standard clip; any clip here.
        model.blocks[5].pool.pool = torch.nn.AdaptiveAvgPool3d(1)
    elif name == "mvit/v2_s":
        import torchvision

        model = torchvision.models.video.mvit_v2_s()
    elif name == "r2plus1d/18":
        import torchvision

        model = torchvision.models.video.r2plus1d_18()
    else:
        return None
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    model = model.eval().to(device)
    t, s = config.data.num_frames, config.data.crop_size
    x = torch.randn(batch, 3, t, s, s, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")

    def run():
        with torch.no_grad(), autocast:
            model(x)
        if cuda:
            torch.cuda.synchronize()

    return 1000 * float(np.median(_timed(run, steps, warmup)))


def host_random(abstract: Any, seed: int) -> Any:
    """Host (NumPy) arrays of ``abstract``'s shapes for a model whose values only need
    to keep its forward finite: every array of two or more dimensions ``N(0, 2 /
    fan_in)`` (He et al.'s scale, fan-in = all but the last axis), one-dimensional
    scales and variances ones, the rest zeros. A stand-in for restored weights, whose
    values do not change the step's cost, at no compile."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path).lower()
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return np.zeros(x.shape, x.dtype)
        if len(x.shape) >= 2:
            std = np.sqrt(2.0 / max(1, int(np.prod(x.shape[:-1]))))
            return (std * rng.standard_normal(x.shape)).astype(x.dtype)
        if "scale" in name or "var" in name:
            return np.ones(x.shape, x.dtype)
        return np.zeros(x.shape, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def bench(
    config, *, batch: int, steps: int, warmup: int, distill: bool, convolutions: str = "auto"
) -> dict:
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
    t_init = time.perf_counter()
    # As the trainer does (vkd_jax.startup): the step compiles in a background thread
    # from the arguments' shapes while this thread makes the state and the teachers.
    init_teacher = lambda m: lambda r: m.init(r, video, train=False)
    t_abstract = {
        n: jax.eval_shape(init_teacher(m), jax.random.key(0)) for n, m in teachers.items()
    }
    t_specs = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), t_abstract
    )
    heads = objective.DistillationHeads(loss_cfg=loss_cfg, dtype=dtype)
    tx, schedule = train_step.make_optimizer(config.optim, 1000)
    dropout_rng = sharding.replicated_key(jax.random.key(1), mesh)
    with layers.convolutions(convolutions):  # Traced (and so compiled) in this mode.
        prepared = startup.prepare(
            init=lambda r: train_step.init_state(
                rng=r,
                student=student,
                heads=heads,
                teachers=teachers,
                teacher_vars=t_abstract,
                tx=tx,
                video=video,
            ),
            step=train_step.make_train_step(
                student=student,
                heads=heads,
                teachers=teachers,
                loss_cfg=loss_cfg,
                # The SDD residual map's shapes (its values do not change the step's cost).
                constants=residual_fit.shape_constants(loss_cfg, teachers, t_abstract, video),
                tx=tx,
                schedule=schedule,
                accum_steps=config.optim.grad_accum_steps,
            ),
            rng=jax.random.key(0),
            mesh=mesh,
            replicated_args=2,  # The dropout key and the teachers' variables.
            example_args=(
                startup.abstract_tree(dropout_rng, keep_sharding=True),
                t_specs,
                sharding.batch_spec(batch, (t, s, s), mesh),
            ),
        )
    # Random teachers, drawn on the host: the trainer restores its teachers from model
    # directories and compiles nothing for them, so neither does this.
    teacher_vars = jax.device_put(
        {n: host_random(t_abstract[n], seed=i) for i, n in enumerate(teachers)}, repl
    )
    state, step = prepared.state, prepared.step
    jax.block_until_ready((state, teacher_vars))
    init_s = time.perf_counter() - t_init
    rng = np.random.default_rng(0)
    batch_arrays = jax.device_put(
        {
            "video": rng.standard_normal((batch, t, s, s, 3), np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32),
        },
        data,
    )
    times, first_step_done = [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = step(state, dropout_rng, teacher_vars, batch_arrays)
        jax.block_until_ready(metrics["loss"])
        first_step_done = first_step_done or time.perf_counter()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert bool(metrics["finite"]), "benchmark step produced a non-finite loss"
    median = float(np.median(times))
    # The background compile's own duration (it overlapped the init).
    compile_s = prepared.compile_seconds()
    memory, memory_kind = _memory(step.compiled())
    return {
        "what": ("distillation step" if distill else "student alone")
        + ("" if convolutions == "auto" else f" ({convolutions} convolutions)"),
        "teachers": ", ".join(names) or "-",
        "step_ms": 1000 * median,
        "p90_ms": 1000 * float(np.percentile(times, 90)),
        "clips_per_s": batch / median,
        "memory_mib": memory,
        "memory_kind": memory_kind,
        "compile_s": compile_s,
        "init_s": init_s,
        # Process start -> this row's first step done (the first row's is the cold start).
        "since_start_s": first_step_done - _PROCESS_START,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--set", action="append", default=[], help="key=value config override")
    parser.add_argument("--forward", action="store_true", help="each model's forward alone")
    parser.add_argument("--torch", action="store_true", help="the PyTorch reference too")
    parser.add_argument(
        "--objective",
        choices=("config", "paper"),
        default="config",
        help="config: the config's loss as it is; paper: DATW + SDD + RKD on top of it "
        "(configs/default.paper_objective), the step every earlier figure of "
        "docs/benchmarks.md timed for configs/default.py, which now runs uniform dual KD",
    )
    parser.add_argument(
        "--convolutions",
        type=lambda v: tuple(v.split(",")),
        default=("auto",),
        help="comma-separated convolution modes to time (auto, native, cpu: "
        "vkd_jax.models.layers.convolutions); the train step and each CNN's forward "
        "get one row per mode",
    )
    parser.add_argument(
        "--allocated-memory",
        action="store_true",
        help="leave the host memory as XLA allocates it, page-faulted in at every step "
        "(by default each step reuses its temporaries' pages, as the CLI does: "
        "vkd_jax.cpu_memory)",
    )
    parser.add_argument(
        "--torchvision-workaround",
        action="store_true",
        help="register an empty torchvision._meta_registrations before importing "
        "torchvision (the PyPI CPU builds of torch and torchvision do not load together "
        "without it; its meta kernels serve only torch.compile)",
    )
    args = parser.parse_args(argv)
    if args.torchvision_workaround:
        import types

        name = "torchvision._meta_registrations"
        sys.modules.setdefault(name, types.ModuleType(name))
    unknown = [m for m in args.convolutions if m not in layers.CONVOLUTION_MODES]
    if unknown:
        parser.error(f"--convolutions: unknown {unknown}; one of {layers.CONVOLUTION_MODES}")
    config = load_config(args.config, args.set)
    if args.objective == "paper":
        from configs import default

        default.paper_objective(config.loss)
    config_lib.validate(config)
    # As the trainer does: a second run loads its compiled programs from disk.
    from vkd_jax.main import enable_compilation_cache, fast_compile_settings

    cache = enable_compilation_cache(config.compilation_cache)
    fast_compile_settings()
    # As the CLI does: on a CPU, each step reuses its temporaries' host memory
    # (vkd_jax.cpu_memory; the PyTorch step, in this process too, shares the setting).
    args.host_memory = not args.allocated_memory and cpu_memory.reuse_host_memory()
    if args.forward:
        print_forward(config, args)
        return
    rows = [
        bench(
            config,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            distill=d,
            convolutions=mode,
        )
        for mode in args.convolutions
        for d in (True, False)
    ]
    if args.torch:  # The same distillation step in PyTorch (tools/torch_step.py).
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch_step

        try:
            ref = torch_step.bench(config, batch=args.batch, steps=args.steps, warmup=args.warmup)
        except (ImportError, RuntimeError, ValueError) as e:
            print(f"PyTorch step unavailable: {type(e).__name__}: {e}")
        else:
            ref.update(teachers=rows[0]["teachers"], memory_kind="peak allocated",
                       compile_s=float("nan"), init_s=float("nan"),
                       since_start_s=float("nan"))  # fmt: skip
            print(f"JAX / PyTorch clips/s: {rows[0]['clips_per_s'] / ref['clips_per_s']:.2f}x")
            rows.append(ref)
    print(
        f"\nvkd_jax train-step benchmark: {args.config} {' '.join(args.set)}\n"
        f"{_header(config, args)}; student {config.student.name}/{config.student.variant}\n"
    )
    print(
        "| step | teachers | median ms | p90 ms | clips/s | memory MiB | init s | compile s "
        "| first step done, s after start |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['teachers']} | {r['step_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['clips_per_s']:.1f} | {_mib(r['memory_mib'], r['memory_kind'])} | "
            f"{r['init_s']:.1f} | {r['compile_s']:.1f} | {r['since_start_s']:.1f} |"
        )
    print(
        f"\nCold start (process start -> first distillation step done): "
        f"{rows[0]['since_start_s']:.1f} s; persistent compilation cache: "
        f"{cache or 'off'} (a second run with it warm shows the warm start)."
    )


def _mib(value: float, kind: str) -> str:
    return "-" if value != value else f"{value:.0f} ({kind})"  # NaN: not reported here.


def _header(config, args) -> str:
    dev = jax.devices()[0]
    t, s = config.data.num_frames, config.data.crop_size
    return (
        f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}); host: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}; "
        f"dtype {config.dtype}; clip {t}x{s}x{s}; global batch {args.batch}; host memory "
        f"{'kept between steps' if args.host_memory else 'as allocated'} "
        "(vkd_jax.cpu_memory)"
    )


def print_forward(config, args) -> None:
    rows = forward_rows(config, batch=args.batch, steps=args.steps, warmup=args.warmup,
                        torch_too=args.torch, modes=args.convolutions)  # fmt: skip
    print(f"\nvkd_jax forward benchmark: {args.config} {' '.join(args.set)}")
    print(_header(config, args) + "\n")
    print(
        "| model | role | convolutions | GMACs/clip | JAX ms | MFU | PyTorch ms | JAX speed-up "
        "| compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        tms = r.get("torch_ms")
        ratio = f"{tms / r['jax_ms']:.2f}x" if tms else "-"
        print(
            f"| {r['model']} | {r['role']} | {r['convolutions']} | {r['gmacs']:.2f} | "
            f"{r['jax_ms']:.1f} | {mfu} | {'-' if tms is None else f'{tms:.1f}'} | {ratio} | "
            f"{r['compile_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
