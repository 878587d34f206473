"""Benchmark: seconds per training epoch of a preset, uadp's path against a plain eager path.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_step.py --config uniad-paper-lite0 --images 687

``uadp`` is what ``uadp run`` does after the first epoch: cached features in, fused AdamW,
the cheap CPU dropout masks, and the autocast precision that ``train.precision`` resolves to on
this machine (``--precision`` overrides it; when that is not fp32, ``uadp fp32`` is timed beside
it, so the precision's own share shows). ``eager`` runs the *same model* the way the official UniAD code
runs it: the frozen backbone on every step (NCHW), ``torch.nn.functional.dropout`` (one Bernoulli
draw per element, attention weights included) and the per-tensor AdamW loop. Both are timed
in alternation in one process, so that load from elsewhere hits both alike; inputs are random
images of the preset's size (timing does not depend on pixel values).

A reconstructor of raw images (``omnial``) has no backbone and no official eager path to
compare with: its step is timed on one batch that the preset's synthesizer made from random
images, at the resolved precision and (beside it) in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="preset name or YAML file (default: the CPU preset)")
    parser.add_argument("--images", type=int, default=687, help="training images per epoch (realmix-dev: 687)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="autocast precision of uadp's step (default: the preset's train.precision)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print the top operators of uadp's step (torch.profiler)"
    )
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from uadp.config import build_config
    from uadp.contract import Batch
    from uadp.engine.components import build_model
    from uadp.engine.device import autocast, precision_name, resolve_precision
    from uadp.registry import get_registry
    from uadp_plugins._layers.attention import MaskedAttention
    from uadp_plugins._layers.dropout import FastDropout

    cfg = build_config(args.config, {}, [])
    cpu = torch.device("cpu")
    dtype = resolve_precision(args.precision or cfg.train.precision, cpu)
    backbone, model, _ = build_model(cfg, get_registry())
    batch_size, (height, width) = cfg.train.batch_size, cfg.data.size_hw
    if backbone is None:
        return time_image_model(cfg, model, dtype, args)
    images = torch.randn(batch_size, 3, height, width)
    with torch.no_grad():
        cached = model.adapt([s.float() for s in backbone(images)])
    model.train()

    def eager_dropout(self, x):
        return F.dropout(x, self.p, self.training)

    def eager_attention(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout)

    fast = (FastDropout.forward, MaskedAttention._attend_with_weight_dropout)
    slow = (eager_dropout, eager_attention)
    parameters = [p for p in model.parameters() if p.requires_grad]
    uadp = f"uadp {precision_name(dtype)}"
    variants = {uadp: dtype, **({"uadp fp32": None} if dtype is not None else {}), "eager fp32": None}
    fused = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    looped = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False)

    def step(variant: str) -> None:
        eager = variant.startswith("eager")
        FastDropout.forward, MaskedAttention._attend_with_weight_dropout = slow if eager else fast
        if eager:
            with torch.no_grad():
                features = model.adapt([s.float() for s in backbone.net(images)])  # NCHW, every step
        else:
            features = cached
        with autocast(cpu, variants[variant]):
            loss = model.training_step(Batch(features=features, target_features=features))["loss"]
        optimise(loss, looped if eager else fused, parameters, cfg.train.grad_clip)

    steps_per_epoch = args.images // batch_size
    print(
        f"{cfg.reconstructor.name} hidden {getattr(cfg.reconstructor, 'hidden_dim', '?')}, batch {batch_size}, "
        f"{height}x{width}, {torch.get_num_threads()} threads, {steps_per_epoch} steps/epoch",
        flush=True,
    )

    def prepare(variant: str) -> None:
        backbone.net.to(memory_format=torch.contiguous_format if variant.startswith("eager") else torch.channels_last)

    time_variants(step, list(variants), args, steps_per_epoch, prepare)
    FastDropout.forward, MaskedAttention._attend_with_weight_dropout = fast
    if args.profile:
        from torch.profiler import profile

        backbone.net.to(memory_format=torch.channels_last)
        with profile() as trace:
            for _ in range(args.steps):
                step(uadp)
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def time_image_model(cfg, model, dtype, args) -> int:
    """Steps of a raw-image reconstructor on one synthesised batch: resolved precision and fp32."""
    import numpy as np
    import torch

    from uadp.contract import Batch
    from uadp.engine.components import build_synthesizer
    from uadp.engine.device import autocast, precision_name
    from uadp.registry import get_registry

    batch_size, (height, width) = cfg.train.batch_size, cfg.data.size_hw
    rng = np.random.default_rng(0)
    clean = [rng.random((height, width, 3), dtype=np.float32) for _ in range(batch_size)]
    images, targets = clean, {}
    if cfg.synthesizer is not None:
        synthesizer, _ = build_synthesizer(cfg, get_registry())
        made = [synthesizer(image, rng) for image in clean]
        images = [m.image for m in made]
        targets = {k: torch.from_numpy(np.stack([m.targets[k] for m in made])) for k in made[0].targets}
    to_batch = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    batch = Batch(images=to_batch(images), targets={"clean_image": to_batch(clean), **targets})
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    variants = {f"uadp {precision_name(dtype)}": dtype, **({"uadp fp32": None} if dtype is not None else {})}

    def step(variant: str) -> None:
        with autocast(torch.device("cpu"), variants[variant]):
            loss = model.training_step(batch)["loss"]
        optimise(loss, optimizer, parameters, cfg.train.grad_clip)

    steps_per_epoch = args.images // batch_size
    print(
        f"{cfg.reconstructor.name} (raw images), batch {batch_size}, {height}x{width}, "
        f"{torch.get_num_threads()} threads, {steps_per_epoch} steps/epoch",
        flush=True,
    )
    time_variants(step, list(variants), args, steps_per_epoch)
    return 0


def optimise(loss, optimizer, parameters, grad_clip) -> None:
    """Backward, optional gradient clipping and the optimiser step, as the trainer does them."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def time_variants(step, variants: list[str], args, steps_per_epoch: int, prepare=None) -> None:
    """Warm each variant up, then time ``args.steps`` steps of each in turn for ``args.rounds``
    rounds (alternating, so outside load hits all alike); print the best round of each."""
    for variant in variants:
        step(variant)
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            if prepare is not None:
                prepare(variant)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(variant)
            results[variant].append((time.perf_counter() - start) / args.steps)
    for variant, times in results.items():
        best = min(times)
        print(
            f"{variant:10s} {best:.3f} s/step  {best * steps_per_epoch:6.1f} s/epoch  "
            f"(rounds: {', '.join(f'{t:.3f}' for t in times)})"
        )


if __name__ == "__main__":
    sys.exit(main())
