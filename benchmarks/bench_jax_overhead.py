"""SCAN's per-step overhead in a jitted JAX loop, against the same loop without SCAN.

The step is CLIP-like and CPU-sized: a two-tower MLP (image: 768 -> 1024 -> 256; text: a
16-token embedding bag, vocabulary 4096, then 256 -> 256), `adapters.jax.clip_loss`, AdamW, one
jitted function that donates its state, global batch B = 256 on one CPU device. Both loops do
the same host work per step (index the host arrays with the batch's ids, place them, dispatch
the step); the SCAN loop adds SCAN's bookkeeping: `plan_epoch`, `plan_batches`,
`AsyncRecorder.push` (which records the previous step) and `recorder.end_epoch()`.

Two measurements, one run:
1. **Wall clock, side by side.** Both loops run in one process, each with its own state,
   in alternating blocks of `--block` steps (ABBA order to cancel drift), each block ended by
   `block_until_ready`. The SCAN loop follows the pruner's natural cycle from
   `warmup_epochs=0` (prepare, then mutation epochs dropping 25%, 75%, 100% of D', ...), its
   epoch boundaries (end_epoch, plan_epoch) falling inside whichever block reaches them. Per
   block, overhead = t_scan / t_base - 1; reported: the median over blocks and the ratio of the
   totals. Numba's one-off compilation of scan_core's kernels is done before timing
   (warm_up_scan), as the step's XLA compilation is. On a shared 2-core machine this
   difference sits inside the noise; read it as a bound. The process's CPU time (all its
   threads, XLA's included) is measured per block too: other processes perturb it less.
2. **Bookkeeping alone.** The SCAN epochs' ids and per-sample losses are replayed through the
   same calls on host numpy (plan_epoch, plan_batches, AsyncRecorder.push, end_epoch) with no
   device work, timed, and divided by the measured step time: the overhead SCAN adds where the
   host is the bottleneck, free of step-time noise.

    .venv/bin/python benchmarks/bench_jax_overhead.py                 # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_jax_overhead.py --write-docs    # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import bench_parser, machine, publish  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from adapters.jax import AsyncRecorder, clip_loss, plan_batches  # noqa: E402
from scan_core import ScanConfig, ScanPruner  # noqa: E402

IMAGE_DIM, TOKENS, VOCABULARY, HIDDEN, EMBED = 768, 16, 4096, 1024, 256


class State(NamedTuple):
    params: dict
    opt_state: optax.OptState


def init_params(key: jax.Array) -> dict:
    k = jax.random.split(key, 4)
    return {"w1": jax.random.normal(k[0], (IMAGE_DIM, HIDDEN)) / np.sqrt(IMAGE_DIM),
            "w2": jax.random.normal(k[1], (HIDDEN, EMBED)) / np.sqrt(HIDDEN),
            "embed": jax.random.normal(k[2], (VOCABULARY, EMBED)) * 0.02,
            "wt": jax.random.normal(k[3], (EMBED, EMBED)) / np.sqrt(EMBED),
            "log_scale": jnp.asarray(np.log(1 / 0.07), jnp.float32)}


def forward(params: dict, images: jax.Array, tokens: jax.Array):
    def unit(v):
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    image = jax.nn.gelu(images @ params["w1"]) @ params["w2"]
    text = params["embed"][tokens].mean(axis=1) @ params["wt"]
    return unit(image), unit(text), jnp.minimum(jnp.exp(params["log_scale"]), 100.0)


def make_step(optimizer: optax.GradientTransformation):
    @functools.partial(jax.jit, donate_argnums=0)
    def step(state: State, images, tokens):
        def loss_fn(params):
            out = clip_loss(*forward(params, images, tokens))
            return out.loss, out.per_sample

        (loss, per_sample), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return State(optax.apply_updates(state.params, updates), opt_state), loss, per_sample

    return step


class Bench:
    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.standard_normal((num_samples, IMAGE_DIM), dtype=np.float32)
        self.tokens = rng.integers(0, VOCABULARY, (num_samples, TOKENS), dtype=np.int32)
        self.batch_size, self.num_samples, self.seed = batch_size, num_samples, seed
        optimizer = optax.adamw(1e-3, weight_decay=0.1)
        params = init_params(jax.random.key(seed))
        self.state = State(params, optimizer.init(params))
        self.step = make_step(optimizer)
        self.config = ScanConfig.clip(seed=seed, warmup_epochs=0)

    def run_step(self, ids: np.ndarray):
        """Index the host arrays, place the batch, dispatch the step; its per_sample."""
        images = jax.device_put(self.images[ids])
        tokens = jax.device_put(self.tokens[ids])
        self.state, loss, per_sample = self.step(self.state, images, tokens)
        return per_sample

    def base_steps(self):
        """The loop without SCAN (a plain numpy shuffle of all N per epoch), one step per next()."""
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            for i in range(self.num_samples // self.batch_size):
                self.run_step(order[i * self.batch_size:(i + 1) * self.batch_size])
                yield
            epoch += 1


class ScanLoop:
    """The loop with SCAN (its own pruner and recorder; the bench's step and state), one step
    per next(), epoch after epoch."""

    def __init__(self, bench: Bench, max_pending: int | None) -> None:
        self.bench = bench
        self.pruner = ScanPruner(bench.num_samples, 2, bench.config)
        self.recorder = AsyncRecorder(self.pruner, max_pending=max_pending)
        self.epoch = 0
        self.trace: list[tuple[int, list[tuple[np.ndarray, jax.Array]]]] = []

    def steps(self):
        bench = self.bench
        while True:
            plan = self.pruner.plan_epoch(self.epoch)
            batches = []
            for ids in plan_batches(plan, bench.batch_size, drop_last=True):
                per_sample = bench.run_step(ids)
                self.recorder.push(ids, per_sample)
                batches.append((ids, per_sample))
                yield
            self.recorder.end_epoch()
            self.trace.append((self.epoch, batches))
            self.epoch += 1

    def replay_bookkeeping(self) -> tuple[float, int]:
        """This loop's epochs' bookkeeping alone on host numpy: (seconds, steps)."""
        host = [(e, [(ids, np.asarray(ps)) for ids, ps in batches]) for e, batches in self.trace]
        pruner = ScanPruner(self.bench.num_samples, 2, self.bench.config)
        recorder = AsyncRecorder(pruner)
        steps = 0
        start = time.perf_counter()
        for epoch, batches in host:
            plan = pruner.plan_epoch(epoch)
            for (_, losses), served in zip(batches, plan_batches(plan, self.bench.batch_size,
                                                                  drop_last=True)):
                recorder.push(served, losses)
                steps += 1
            recorder.end_epoch()
        elapsed = time.perf_counter() - start
        assert [r["num_kept"] for r in pruner.log] == \
            [r["num_kept"] for r in self.pruner.log[:len(host)]]
        return elapsed, steps


def warm_up_scan(num_samples: int, batch_size: int, config: ScanConfig) -> None:
    """Compile scan_core's Numba kernels (record, candidate union, the mutation draw) on a
    throwaway pruner, so that no repetition pays a one-off compilation."""
    rng = np.random.default_rng(1)
    pruner = ScanPruner(num_samples, 2, config)
    recorder = AsyncRecorder(pruner)
    for epoch in range(2):
        for ids in plan_batches(pruner.plan_epoch(epoch), batch_size, drop_last=True):
            recorder.push(ids, jnp.asarray(rng.random((2, len(ids)), dtype=np.float32)))
        recorder.end_epoch()


LOOPS = ("base", "scan", "scan_unbounded")


def run(num_samples: int, batch_size: int, block: int, epochs: int, seed: int) -> dict:
    bench = Bench(num_samples, batch_size, seed)
    bench.run_step(np.arange(batch_size))  # compile the step
    jax.block_until_ready(bench.state)
    warm_up_scan(num_samples, batch_size, bench.config)
    scan = {"scan": ScanLoop(bench, max_pending=1), "scan_unbounded": ScanLoop(bench, None)}
    loops = {"base": bench.base_steps(), **{k: v.steps() for k, v in scan.items()}}
    totals = dict.fromkeys(LOOPS, 0.0)
    cpu = dict.fromkeys(LOOPS, 0.0)
    ratios: dict[str, list[float]] = {k: [] for k in scan}
    cpu_ratios: dict[str, list[float]] = {k: [] for k in scan}
    steps, r = 0, 0
    while min(loop.epoch for loop in scan.values()) < epochs:
        times, cpu_times = {}, {}
        for name in (LOOPS if r % 2 == 0 else LOOPS[::-1]):  # ABCCBA
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(block):
                next(loops[name])
            jax.block_until_ready(bench.state)
            times[name] = time.perf_counter() - start
            cpu_times[name] = time.process_time() - cpu_start
            totals[name] += times[name]
            cpu[name] += cpu_times[name]
        for name in scan:
            ratios[name].append(times[name] / times["base"] - 1)
            cpu_ratios[name].append(cpu_times[name] / cpu_times["base"] - 1)
        steps += block
        r += 1
    book_s, book_steps = scan["scan"].replay_bookkeeping()
    for name in scan:
        print(f"{name}: {r} blocks of {block} steps; per block overhead quartiles "
              f"{np.percentile(ratios[name], [25, 50, 75]).round(4).tolist()}")
    return {"ratios": ratios, "totals": totals, "steps": steps, "block": block,
            "cpu": cpu, "cpu_ratios": cpu_ratios,
            "bookkeeping_per_step": book_s / book_steps, "bookkeeping_steps": book_steps,
            "log": scan["scan"].pruner.log[:epochs]}


def report(result: dict, args: argparse.Namespace, command: str) -> str:
    m = machine()
    steps, totals, ratios = result["steps"], result["totals"], result["ratios"]
    base = totals["base"] / steps
    book = result["bookkeeping_per_step"]
    kept = ", ".join(f"{r['phase']} {r['num_kept']}" for r in result["log"])
    lines = [
        f"Command: `{command}`. Machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB; "
        f"Python {m['python']}, numpy {m['numpy']}, jax {jax.__version__}, optax "
        f"{optax.__version__}, one CPU device; commit {m['commit']}. Load average when the "
        f"run ended (other jobs share the machine): {os.getloadavg()[0]:.1f}.",
        "",
        f"N = {args.num_samples}, B = {args.batch_size}; {len(ratios['scan'])} rounds of one "
        f"{result['block']}-step block of each loop ({steps} steps per loop), block order "
        f"alternating. SCAN epochs (phase, kept samples): {kept}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| step time without SCAN (all baseline blocks) | {base * 1e3:.2f} ms "
        f"({result['cpu']['base'] / steps * 1e3:.2f} ms of CPU) |",
    ]
    for name, label in (("scan", "AsyncRecorder(pruner) (max_pending=1, the default)"),
                        ("scan_unbounded", "AsyncRecorder(pruner, max_pending=None)")):
        q1, median, q3 = np.percentile(ratios[name], [25, 50, 75])
        lines += [
            f"| step time with SCAN, {label} | {totals[name] / steps * 1e3:.2f} ms |",
            f"| **wall-clock overhead, {label}: median over rounds of t_scan / t_base - 1** | "
            f"**{median:+.2%}** (quartiles {q1:+.2%} / {q3:+.2%}; ratio of totals "
            f"{totals[name] / totals['base'] - 1:+.2%}) |",
            f"| CPU-time overhead (this process, all threads), {label}: median over rounds | "
            f"{np.median(result['cpu_ratios'][name]):+.2%} (ratio of totals "
            f"{result['cpu'][name] / result['cpu']['base'] - 1:+.2%}) |"]
    lines += [
        f"| SCAN bookkeeping alone, per step (host replay of the same {result['bookkeeping_steps']}"
        f" steps, epoch boundaries included) | {book * 1e6:.0f} us |",
        f"| **bookkeeping alone / step time without SCAN** | **{book / base:.2%}** |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, num_samples=16384, batch_size=256)
    parser.add_argument("--block", type=int, default=8, help="steps per timed block")
    parser.add_argument("--epochs", type=int, default=16, help="SCAN epochs to run")
    args = parser.parse_args(argv)
    command = ".venv/bin/python benchmarks/bench_jax_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    result = run(args.num_samples, args.batch_size, args.block, args.epochs, args.seed)
    publish(report(result, args, command.strip()), "bench_jax_overhead",
            write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
