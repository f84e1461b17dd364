"""Stage what the GPU check needs on a machine that has no network and no zarr: manylinux
cp312 wheels of zarr and the packages it needs that the device image lacks, and a Fashion-MNIST
subset for the trainer run, in one git-ignored folder that travels with the device tool's
`carry` (docs/benchmarks.md, "GPU check").

    .venv/bin/python benchmarks/stage_gpu_check.py            # -> .gpu-stage/ (make gpu-stage)

What it does:
1. `pip download --no-deps --only-binary=:all:` for CPython 3.12 on manylinux x86-64, of
   zarr, numcodecs, donfig, google-crc32c and typing-extensions (zarr 3 asks for >= 4.14; the
   device's version is not known), at the versions this machine's venv runs when it has them;
   then of every requirement of a staged wheel (extras and markers that do not hold on Linux /
   CPython 3.12 are left out) that is neither staged nor in DEVICE_HAS, until none is left.
2. Writes the first --num-train training and --num-test test images of Fashion-MNIST as gzipped
   IDX files into DEST/fashion-mnist (the trainer part's data; it generates data without them).
3. Measures what would travel: the repository's files (tracked, and untracked but not ignored)
   plus DEST, against the device tool's 64 MiB; exits 1 above it. Writes DEST/MANIFEST.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping

TRAVEL_LIMIT_BYTES = 64 * 2**20
ROOT_WHEELS = ("zarr", "numcodecs", "donfig", "google-crc32c", "typing-extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
#: Python packages the device image already holds (/work/.library/device/KINDS.md, "Python
#: packages already there", read 2026-11-17), the ones a staged wheel may ask for.
DEVICE_HAS = frozenset({
    "numpy", "packaging", "pyyaml", "typing-inspect", "mypy-extensions", "attrs", "fsspec",
    "msgpack", "numba", "llvmlite", "pillow", "torch", "jax", "jaxlib", "flax", "optax",
    "setuptools", "six", "python-dateutil", "requests", "urllib3", "certifi", "idna",
    "charset-normalizer", "filelock", "jinja2", "markupsafe", "sympy", "networkx", "rich",
    "toolz", "zipp", "protobuf", "psutil", "tqdm", "wrapt"})
MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "os_name": "posix",
              "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "extra": ""}


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requirements(wheel: pathlib.Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def needed(requirements: Iterable[str]) -> list[str]:
    """Canonical names of the requirements that hold on the device: no extra, markers true
    for CPython 3.12 on Linux x86-64."""
    from packaging.requirements import Requirement

    names = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
            continue
        names.append(canonical(req.name))
    return names


def missing(requirements_by_wheel: Mapping[str, Iterable[str]], staged: Iterable[str],
            device_has: Iterable[str] = DEVICE_HAS) -> dict[str, list[str]]:
    """{wheel: [needed names neither staged nor on the device]}, wheels with none left out."""
    have = {canonical(n) for n in staged} | {canonical(n) for n in device_has}
    out = {}
    for wheel, reqs in requirements_by_wheel.items():
        lacking = sorted(set(needed(reqs)) - have)
        if lacking:
            out[wheel] = lacking
    return out


def local_version(name: str) -> str | None:
    """The version this interpreter has installed, to stage what the tests ran with."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def download(name: str, dest: pathlib.Path) -> pathlib.Path:
    """pip download one cp312 manylinux (or pure-Python) wheel of `name` into dest."""
    version = local_version(name)
    spec = f"{name}=={version}" if version else name
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           *[arg for p in PLATFORMS for arg in ("--platform", p)], "-d", str(dest), spec]
    subprocess.run(cmd, check=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    found = new or [w for w in dest.glob("*.whl")
                    if canonical(w.name.split("-")[0]) == canonical(name)]
    if not found:
        raise SystemExit(f"pip download {spec} saved no wheel into {dest}")
    return found[0]


def stage_wheels(dest: pathlib.Path) -> dict[str, str]:
    """Download ROOT_WHEELS and what they need; return {canonical name: wheel file}."""
    dest.mkdir(parents=True, exist_ok=True)
    staged: dict[str, str] = {}
    queue = list(ROOT_WHEELS)
    while queue:
        name = canonical(queue.pop(0))
        if name in staged:
            continue
        wheel = download(name, dest)
        staged[name] = wheel.name
        for lacking in missing({wheel.name: wheel_requirements(wheel)}, staged).values():
            queue.extend(lacking)
    names = sorted(canonical(w.name.split("-")[0]) for w in dest.glob("*.whl"))
    if len(names) != len(set(names)):
        raise SystemExit(f"two versions of one package in {dest}: {names}; empty it and rerun")
    return staged


def stage_fashion_mnist(source: str | None, dest: pathlib.Path, *, num_train: int,
                        num_test: int) -> dict[str, int]:
    """The first num_train / num_test images of both splits as gzipped IDX files in dest."""
    from reference_trainers.common.data import load_fashion_mnist, write_idx

    splits = load_fashion_mnist(source)
    dest.mkdir(parents=True, exist_ok=True)
    write_idx(dest / "train-images-idx3-ubyte.gz", splits.train_images[:num_train])
    write_idx(dest / "train-labels-idx1-ubyte.gz", splits.train_labels[:num_train].astype("u1"))
    write_idx(dest / "t10k-images-idx3-ubyte.gz", splits.test_images[:num_test])
    write_idx(dest / "t10k-labels-idx1-ubyte.gz", splits.test_labels[:num_test].astype("u1"))
    return {"num_train": min(num_train, len(splits.train_images)),
            "num_test": min(num_test, len(splits.test_images))}


def folder_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def repository_bytes(root: pathlib.Path) -> int:
    """Bytes of the files that travel without `carry`: tracked, and untracked not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=root, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return sum((root / p).stat().st_size for p in listed if p and (root / p).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=".gpu-stage", help="the folder named in `carry`")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: "
                        "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--no-wheels", action="store_true", help="stage the data only")
    args = parser.parse_args(argv)
    root = pathlib.Path(__file__).resolve().parent.parent
    dest = pathlib.Path(args.dest)
    dest = dest if dest.is_absolute() else root / dest
    manifest: dict = {"wheels": {} if args.no_wheels else stage_wheels(dest / "wheels")}
    manifest["fashion_mnist"] = stage_fashion_mnist(args.data_dir, dest / "fashion-mnist",
                                                    num_train=args.num_train,
                                                    num_test=args.num_test)
    manifest["stage_bytes"] = folder_bytes(dest)
    manifest["repository_bytes"] = repository_bytes(root)
    total = manifest["stage_bytes"] + manifest["repository_bytes"]
    manifest["travel_bytes"] = total
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest, indent=1))
    print(f"travels: {total / 2**20:.1f} MiB of {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB "
          f"(repository {manifest['repository_bytes'] / 2**20:.1f} MiB + "
          f"{os.path.relpath(dest, root)} {manifest['stage_bytes'] / 2**20:.1f} MiB)")
    if total > TRAVEL_LIMIT_BYTES:
        print("too large for the device tool: lower --num-train", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    sys.exit(main())
