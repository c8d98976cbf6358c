"""The dual-teacher train step in PyTorch, for ``tools/benchmark.py --torch``.

The same objective as ``vkd_jax.losses.objective.total_loss`` with the config's loss
settings: cross-entropy + DATW KD (docs/design.md eqs. D1-D5) + SDD (the ViT-minus-CNN
residual on a common grid, eq. S1, or the earlier random projections, eq. S1', as
``loss.sdd.target`` says; predicted by a
1x1x1 conv + non-local + squeeze-excite branch on the student's last stage) + RKD
distance and angle (Park et al. 2019) on the pre-logit embeddings. The loss
functions are tested against vkd_jax's (tests/test_torch_step.py); the models are
pytorchvideo's X3D and torchvision's MViTv2-S, eager, autocast bf16, cudnn.benchmark,
AdamW. No TensorFlow is imported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vkd_jax import residual_fit
from vkd_jax.losses.objective import sdd_uses_residual_map
from vkd_jax.losses.sdd import fixed_projection


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------------- the losses


def datw_kd(
    student_logits,
    teacher_logits,
    *,
    temperature: float,
    a: float = 1.0,
    b: float = 1.0,
    gamma: float = 1.0,
    adaptive: bool = True,
):
    """Per-example DATW KD, ``(B,)``; ``teacher_logits`` is ``(K, B, C)``."""
    torch = _torch()
    F = torch.nn.functional
    s = student_logits.float()
    z = teacher_logits.float()
    with torch.no_grad():
        log_p = F.log_softmax(z / temperature, -1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        c = (1.0 - entropy / math.log(z.shape[-1])).clamp(0.0, 1.0)
        sd = s.detach()[None]
        dot = (z * sd).sum(-1)
        denom = ((z * z).sum(-1) * (sd * sd).sum(-1)).clamp_min(1e-24).sqrt()
        d = (1.0 - dot / denom).clamp(0.0, 2.0)
        w = (
            torch.softmax((a * c + b * d) / gamma, 0)
            if adaptive
            else torch.full_like(c, 1 / len(z))
        )
        target = F.log_softmax((w[..., None] * z).sum(0) / temperature, -1)
    log_q = F.log_softmax(s / temperature, -1)
    return temperature**2 * (target.exp() * (target - log_q)).sum(-1)


def _pool(x, grid: Sequence[int]):
    """``(B, C, T, H, W)`` -> ``(B, T', H', W', C)`` adaptive average pool."""
    return _torch().nn.functional.adaptive_avg_pool3d(x.float(), tuple(grid)).permute(0, 2, 3, 4, 1)


def _pooled(x, grid):
    """``N(P(f))``: pooled to ``grid``, then zero mean and unit variance per position."""
    x = _pool(x, grid)
    return (x - x.mean(-1, keepdim=True)) * (x.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt()


def _phi(x, grid, dim, seed, salt):
    x = _pooled(x, grid)
    q = np.array(fixed_projection(x.shape[-1], dim, seed, salt))  # A writable copy.
    q = _torch().as_tensor(q, device=x.device)
    return x @ q


def sdd(predicted, f_vit, f_cnn, *, grid, dim: int, seed: int = 0, residual_map=None):
    """Per-example SDD MSE, ``(B,)``; features channels-first ``(B, C, T, H, W)``.

    ``residual_map`` (``weight``, ``bias``, ``basis`` tensors): the residual target
    ``(N(P(f_vit)) - N(P(f_cnn)) A - b) U`` (docs/design.md eq. S1); ``None``: the
    random-projection target (eq. S1')."""
    with _torch().no_grad():
        if residual_map is None:
            target = _phi(f_vit, grid, dim, seed, 0) - _phi(f_cnn, grid, dim, seed, 1)
        else:
            y, x = _pooled(f_vit, grid), _pooled(f_cnn, grid)
            a, b, u = (residual_map[k] for k in ("weight", "bias", "basis"))
            target = (y - x @ a - b) @ u
    return ((predicted.float() - target) ** 2).flatten(1).mean(1)


def _smooth_l1(x):
    ax = x.abs()
    return _torch().where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _distances(e):
    e = e.float().flatten(1)
    d = _torch().cdist(e, e)
    n = len(d)
    # As vkd_jax's rkd: one clip has no pairs (n(n-1) = 0) and equal embeddings have no
    # scale; both give distances of 0 rather than 0/0.
    mu = d.sum() / max(n * (n - 1), 1)
    return d / _torch().where(mu > 0, mu, _torch().ones_like(mu))


def rkd_distance(s, t):
    with _torch().no_grad():
        td = _distances(t)
    return _smooth_l1(_distances(s) - td).mean()


def _angles(e):
    F = _torch().nn.functional
    e = e.float().flatten(1)
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (A, N, D): x_j - x_i
    return diff @ diff.transpose(1, 2)  # (A, N, N)


def rkd_angle(s, t):
    with _torch().no_grad():
        ta = _angles(t)
    return _smooth_l1(_angles(s) - ta).mean()


def total_loss(loss_cfg, labels, s_logits, s_emb, sdd_pred, teachers: dict, residual_map=None):
    """``teachers``: name -> (logits, last-stage feature ``(B, C, T, H, W)``, embedding);
    ``residual_map``: SDD's residual map where ``loss.sdd.target == "residual"``."""
    torch = _torch()
    F = torch.nn.functional
    cfg = loss_cfg
    loss = cfg.ce_weight * F.cross_entropy(s_logits.float(), labels)
    if cfg.kd_weight:
        z = torch.stack([teachers[n][0] for n in cfg.kd_teachers])
        kd = datw_kd(
            s_logits,
            z,
            temperature=cfg.temperature,
            a=cfg.datw.confidence_weight,
            b=cfg.datw.discrepancy_weight,
            gamma=cfg.datw.weight_temperature,
            adaptive=cfg.teacher_weighting == "datw",
        )
        loss = loss + cfg.kd_weight * kd.mean()
    if cfg.sdd_weight:
        f_vit, f_cnn = teachers[cfg.sdd.vit_teacher][1], teachers[cfg.sdd.cnn_teacher][1]
        value = sdd(
            sdd_pred,
            f_vit,
            f_cnn,
            grid=cfg.sdd.grid,
            dim=cfg.sdd.dim,
            seed=cfg.sdd.projection_seed,
            residual_map=residual_map,
        )
        loss = loss + cfg.sdd_weight * value.mean()
    t_emb = teachers[cfg.rkd.teacher][2]
    if cfg.rkd_distance_weight:
        loss = loss + cfg.rkd_distance_weight * rkd_distance(s_emb, t_emb)
    if cfg.rkd_angle_weight:
        loss = loss + cfg.rkd_angle_weight * rkd_angle(s_emb, t_emb)
    return loss


# -------------------------------------------------------------------- models, step


def _branch(torch, cin: int, dim: int, grid):
    nn = torch.nn

    class NonLocal(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = max(c // 2, 1)
            self.theta, self.phi, self.g = (nn.Linear(c, d) for _ in range(3))
            self.out, self.norm, self.d = nn.Linear(d, c), nn.LayerNorm(c), d

        def forward(self, x):  # (B, N, C)
            a = torch.softmax(self.theta(x) @ self.phi(x).transpose(1, 2) / self.d**0.5, -1)
            return x + self.norm(self.out(a @ self.g(x)))

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv3d(cin, dim, 1)
            self.non_local = NonLocal(dim)
            self.se = nn.Sequential(
                nn.Linear(dim, max(dim // 4, 1)),
                nn.ReLU(),
                nn.Linear(max(dim // 4, 1), dim),
                nn.Sigmoid(),
            )

        def forward(self, x):  # (B, C, T, H, W) -> (B, T', H', W', D)
            x = self.proj(x)
            b, c, t, h, w = x.shape
            tokens = self.non_local(x.flatten(2).transpose(1, 2))
            tokens = tokens * self.se(tokens.mean(1))[:, None]
            x = tokens.transpose(1, 2).reshape(b, c, t, h, w)
            return torch.nn.functional.adaptive_avg_pool3d(x, tuple(grid)).permute(0, 2, 3, 4, 1)

    return Branch()


class _Tap:
    """Keeps a module's output (or input) during a forward."""

    def __init__(self, module, *, inputs: bool = False):
        self.value = None
        if inputs:
            module.register_forward_hook(lambda m, i, o: setattr(self, "value", i[0]))
        else:
            module.register_forward_hook(lambda m, i, o: setattr(self, "value", o))


def _x3d(variant: str, t: int, s: int, num_classes: int):
    from pytorchvideo.models.x3d import create_x3d

    depth = {"s": 2.2, "m": 2.2, "xs": 2.2, "l": 5.0}[variant]
    net = create_x3d(
        input_clip_length=t, input_crop_size=s, depth_factor=depth, model_num_class=num_classes
    )
    stage = _Tap(net.blocks[4])  # last residual stage (B, C, T, H, W)
    emb = _Tap(net.blocks[5].proj, inputs=True)  # pooled 2048-d pre-logits

    def features():
        return stage.value, emb.value.flatten(1)

    return net, features, net.blocks[4].res_blocks[-1].branch2.conv_c.out_channels


def _mvit(t: int, s: int, num_classes: int):
    import torchvision

    net = torchvision.models.video.mvit_v2_s(num_classes=num_classes)
    last = _Tap(net.blocks[-1])
    emb = _Tap(net.head, inputs=True)

    def features():
        tokens, thw = last.value
        x = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *thw)
        return x, emb.value

    return net, features


def bench(config: Any, *, batch: int, steps: int, warmup: int, num_classes: int = 12) -> dict:
    """Times the PyTorch dual-teacher step (student x3d, teachers x3d + MViTv2-S)."""
    torch = _torch()
    cfg = config.loss
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    t, s = config.data.num_frames, config.data.crop_size
    specs = {"student": config.student, **{n: config.teachers[n] for n in config.teachers}}
    for name, spec in specs.items():
        if (spec.name, spec.variant) not in (
            ("x3d", "s"),
            ("x3d", "m"),
            ("x3d", "xs"),
            ("x3d", "l"),
            ("mvit", "v2_s"),
        ):
            raise ValueError(
                f"--torch step: no PyTorch reference for {name} = {spec.name}/"
                f"{spec.variant} (x3d xs/s/m/l, mvit v2_s)"
            )
    student, s_feat, s_width = _x3d(config.student.variant, t, s, num_classes)
    teachers = {}
    for name in {*cfg.kd_teachers, cfg.sdd.vit_teacher, cfg.sdd.cnn_teacher, cfg.rkd.teacher}:
        spec = config.teachers[name]
        net, feat = (
            _mvit(t, s, num_classes)
            if spec.name == "mvit"
            else _x3d(spec.variant, t, s, num_classes)[:2]
        )
        teachers[name] = (net.to(device).eval().requires_grad_(False), feat)
    video = torch.randn(batch, 3, t, s, s, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    residual_map, dim = None, cfg.sdd.dim
    if sdd_uses_residual_map(cfg):
        # As tools/benchmark.py's JAX step: a map of the fitted map's shapes.
        channels = []
        with torch.no_grad():
            for name in (cfg.sdd.cnn_teacher, cfg.sdd.vit_teacher):
                net, feat = teachers[name]
                net(video[:1])
                channels.append(feat()[0].shape[1])
        placeholder = residual_fit.placeholder_map(*channels, cfg.sdd.dim)
        residual_map = {k: torch.as_tensor(v, device=device) for k, v in placeholder.items()}
        dim = residual_map["basis"].shape[1]
    branch = _branch(torch, s_width, dim, cfg.sdd.grid)
    student, branch = student.to(device).train(), branch.to(device).train()
    params = [*student.parameters(), *branch.parameters()]
    opt = torch.optim.AdamW(
        params, lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")

    def step():
        with autocast:
            outs = {}
            with torch.no_grad():
                for name, (net, feat) in teachers.items():
                    logits = net(video)
                    f, e = feat()
                    outs[name] = (logits.float(), f, e)
            logits = student(video)
            f, e = s_feat()
            loss = total_loss(cfg, labels, logits, e, branch(f), outs, residual_map)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip_norm or float("inf"))
        opt.step()
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise FloatingPointError("PyTorch benchmark step produced a non-finite loss")
    median = float(np.median(times))
    return {
        "what": "PyTorch distillation step",
        "step_ms": 1000 * median,
        "p90_ms": 1000 * float(np.percentile(times, 90)),
        "clips_per_s": batch / median,
        "memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
    }
