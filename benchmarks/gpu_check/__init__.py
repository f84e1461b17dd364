"""GPU acceptance check (issue 19): one prepared command that proves the CUDA paths of this
project and measures its speed and SCAN's cost on the device, time-boxed part by part.

    python -m benchmarks.gpu_check --out DIR              # on a GPU machine (about 8 minutes)
    python -m benchmarks.gpu_check --dry-run --out DIR    # the same parts at tiny shapes, CPU

Each part runs in its own Python process (a hung CUDA kernel or a slow compile can be killed
without losing the rest, and the JAX part never shares a process with torch's DataLoader),
under its own time box. A part appends its measured rows to a JSON-lines file as it goes, so a
part stopped at its time box still reports what it measured. A failing part is reported and the
rest go on. DIR receives results.json, results.md and gpu_check.log (every part's output).

The parts, in order (PARTS): env, clip, scan_cost, nccl, trainer, moco, jax, jax_vs_torch.
docs/benchmarks.md ("GPU check") says how to run it on a leased GPU with the staged wheels.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PartSpec:
    """One part: `target` is "module:function" (the function takes a PartContext), `budget_s`
    its share of the GPU run's time box, `dry_budget_s` its share in a --dry-run."""

    name: str
    target: str
    budget_s: float
    dry_budget_s: float
    title: str


def _parts(table: str) -> tuple[PartSpec, ...]:
    """PartSpecs from a text table, one part a line: name, budget_s, dry_budget_s, title; the
    target is the module `benchmarks.gpu_check.part_<name>`'s `run`."""
    specs = []
    for line in table.strip().splitlines():
        name, budget_s, dry_budget_s, title = line.split(maxsplit=3)
        specs.append(PartSpec(name, f"benchmarks.gpu_check.part_{name}:run", float(budget_s),
                              float(dry_budget_s), title))
    return tuple(specs)


PARTS = _parts("""
    env            30   60  1. environment and imports
    clip          170   90  2. CLIP RN50 / ViT-B-32 throughput and memory
    scan_cost      45   60  3. SCAN's per-step cost in a preparation epoch
    nccl           20   45  4. TorchCommunicator on NCCL vs gloo
    trainer       100   90  5. CLIP trainer run on shards: epoch time vs kept share
    moco           30   45  6. MoCo v3 ViT-S/16 throughput and memory
    jax            60  120  7a. JAX CLIP step with and without the recorder; JAX losses
    jax_vs_torch   15   45  7b. JAX losses vs the torch adapter's
""")

#: The whole GPU run's time box (issue 19: at most 8 minutes), and the dry run's. The dry
#: budgets are a safety net for a shared 2-core CI box (under a load of 11 there, JAX alone
#: took 6 s to import, 10 s to initialise and 31 s to compile the step), not a target.
BUDGET_S = 480.0
DRY_BUDGET_S = 600.0
