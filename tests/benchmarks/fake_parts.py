"""Stand-in parts for the GPU check's runner tests: no framework imported, seconds each."""

import time


def ok(ctx):
    ctx.emit("answer", 42, "units", note="a | pipe")


def fail(ctx):
    ctx.emit("before the failure", 1)
    raise ValueError("planted failure 7")


def hang(ctx):
    ctx.emit("before the hang", 1)
    time.sleep(600)


def sleep_a_little(ctx):
    time.sleep(1.0)
    ctx.emit("slept", 1.0, "s")


def report_deadline(ctx):
    ctx.emit("deadline left", round(ctx.left_s(), 1), "s")
