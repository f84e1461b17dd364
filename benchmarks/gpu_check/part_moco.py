"""Part 6: MoCo v3 ViT-S/16 training throughput and peak memory in bf16 (eager), at batch
256 per GPU, over 30 timed steps after warm-up. The model is the MoCo trainer's
(reference_trainers.moco.model.build_moco("vit_small"): ViT-S/16, 3-layer projector 256/4096,
2-layer predictor, momentum encoder updated inside the forward); the step is its step
(torch_steps.moco_step: two crops, moco_loss in float32, AdamW). A dry run stands in the CPU
preset's small ResNet at fp32 on 28x28 crops.
"""

from __future__ import annotations

import torch

from benchmarks.gpu_check import torch_steps as ts
from benchmarks.gpu_check.runner import PartContext
from reference_trainers.moco.model import build_moco


def run(ctx: PartContext) -> None:
    dry = ctx.dry_run
    batch, warmup, steps = (4, 1, 2) if dry else (256, 5, 30)
    dev, amp = ts.start(dry)
    model = (build_moco("resnet") if dry else build_moco("vit_small")).to(dev)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1.5e-4, weight_decay=0.1)
    shape = (batch, 1, 28, 28) if dry else (batch, 3, 224, 224)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(shape, generator=g).to(dev), torch.randn(shape, generator=g).to(dev)
    ts.reset_peak(dev)
    seconds, done = ts.time_steps(lambda: ts.moco_step(model, optimizer, amp, x1, x2), dev,
                                  warmup=warmup, steps=steps, deadline=ctx.soft_deadline(3))
    peak = ts.peak_gib(dev)
    name = "small ResNet (dry stand-in)" if dry else "ViT-S/16"
    ctx.emit(f"MoCo v3 {name} {ts.precision(dry)} batch {batch}",
             round(batch * done / seconds, 1), "images/s",
             note=f"{done} steps, {1000 * seconds / done:.1f} ms/step, two crops per image "
                  f"({2 * batch * done / seconds:.0f} crops/s); peak "
                  f"{'n/a (CPU)' if peak is None else f'{peak:.1f} GiB'}",
             batch=batch, steps=done, ms_per_step=1000 * seconds / done, peak_gib=peak)
