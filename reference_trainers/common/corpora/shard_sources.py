"""Where tar shards come from: a folder, webdataset URLs (open_clip's `--train-data`), and how
each shard is opened: seekable local files, or `pipe:` commands read as a stream.

A source is one string:

* a folder: every `*.tar` in it, sorted by name (the original `shards:DIR`);
* a single `.tar` file;
* a brace pattern, `'/data/cc3m/{00000..00331}.tar'` (expanded by the `braceexpand` package,
  as webdataset and open_clip expand it: numeric ranges keep their zero padding, `{a,b}` lists);
* a `::` list of any of the above, `'/a/{0..9}.tar::/b/x.tar'`, shards in the order written;
* `pipe:COMMAND`: a shell command whose standard output is the tar (`pipe:aws s3 cp s3://b/0.tar
  -`, `pipe:curl -s URL`), brace-expanded too.

Ids are dense in the order (shard in the source's order, member position in the shard).

Local files are read by seeking: a pruned sample's bytes are never read. A `pipe:` shard cannot
seek, so it is streamed from its start: every member passes through, but a pruned sample is
dropped right after it is read and before it is decoded (no Pillow, no tokenizer), and the
command is stopped once the last wanted sample of the shard has arrived. While streaming, every
key is checked against the index, so a shard whose content changed since it was indexed is a
DataError naming it, not silently shifted ids.

>>> expand_urls("d/{00000..00002}.tar::e/x.tar")
['d/00000.tar', 'd/00001.tar', 'd/00002.tar', 'e/x.tar']
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator

from reference_trainers.common.errors import DataError

PIPE = "pipe:"
URL_HINT = ("a folder of .tar shards, a .tar file, a brace pattern 'DIR/{00000..00009}.tar', "
            "a '::' list of these, or pipe:COMMAND")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def _braceexpand(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand
    except ImportError as err:
        raise DataError(f"{pattern!r} holds a brace pattern, which needs the braceexpand "
                        "package: pip install braceexpand (the project's torch or jax extra "
                        "installs it)") from err
    try:
        return list(braceexpand(pattern))
    except Exception as err:  # braceexpand raises its own UnbalancedBracesError (a ValueError)
        raise DataError(f"cannot expand the brace pattern {pattern!r}: {err}") from err


def expand_urls(source: str) -> list[str]:
    """The shard URLs of a `::` list of brace patterns, in the order written."""
    parts = [part.strip() for part in source.split("::")]
    if not source.strip() or any(not part for part in parts):
        raise DataError(f"shard source {source!r} has an empty part; expected {URL_HINT}")
    return [url for part in parts for url in _braceexpand(part)]


def is_url_source(source: str) -> bool:
    """True for what only the URL syntax reads (braces, '::', pipe:, a single .tar)."""
    return (any(mark in source for mark in ("{", "::")) or source.startswith(PIPE)
            or source.lower().endswith(".tar"))


@dataclasses.dataclass(frozen=True)
class ShardList:
    """The shards of a source. names: what the index stores and messages show (a folder's file
    names, else the URLs as expanded); urls: what is opened (a path or pipe:COMMAND); folder:
    the source folder (where an index may sit beside the shards), None for URLs."""

    source: str
    names: list[str]
    urls: list[str]
    folder: pathlib.Path | None

    @classmethod
    def resolve(cls, source: str | os.PathLike) -> "ShardList":
        text = os.fspath(source)
        if not is_url_source(text):
            folder = pathlib.Path(text)
            if not folder.is_dir():
                raise DataError(f"shard folder {folder} does not exist; expected {URL_HINT}")
            files = sorted(folder.glob("*.tar"))
            return cls(text, [p.name for p in files], [str(p) for p in files], folder)
        urls = expand_urls(text)
        for url in urls:
            if not url.startswith(PIPE) and not os.path.isfile(url):
                raise DataError(f"shard {url} (from {text!r}) does not exist or is not a file; "
                                f"expected {URL_HINT}")
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise DataError(f"{text!r} names shard(s) {duplicates[:3]} more than once: their "
                            "keys would occur twice; list every shard once")
        return cls(text, list(urls), list(urls), None)

    def sizes(self) -> list[int]:
        """Bytes of each local shard; -1 for a pipe: shard (checked by key while streamed)."""
        return [-1 if url.startswith(PIPE) else os.path.getsize(url) for url in self.urls]


def is_streamed(url: str) -> bool:
    return url.startswith(PIPE)


def _command_failure(process: subprocess.Popen, errors) -> str:
    """', the command exited with status S: STDERR' once it has ended with an error, else ''
    (`errors`: the file its standard error went to; a file, so a chatty command never blocks)."""
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    if process.returncode in (0, None) or process.returncode < 0:
        return ""
    errors.seek(0)
    text = errors.read().decode(errors="replace").strip()
    return f"; the command exited with status {process.returncode}: {text[:400]}"


@contextlib.contextmanager
def open_stream_tar(url: str) -> Iterator[tarfile.TarFile]:
    """The tar that `pipe:COMMAND` writes to its standard output, read front to back (mode
    'r|'). On leaving, a command still running (the reader stopped early) is stopped; a command
    that failed, or output that is not a complete tar, is a DataError naming the shard."""
    errors = tempfile.TemporaryFile()
    process = subprocess.Popen(url[len(PIPE):], shell=True, stdout=subprocess.PIPE,
                               stderr=errors, bufsize=1 << 20)
    try:
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
                yield tar
        except (tarfile.TarError, OSError, EOFError) as err:
            failure = _command_failure(process, errors)
            raise DataError(f"cannot read shard {url} as an uncompressed tar stream: {err}"
                            f"{failure}") from err
        if process.poll() is None:  # stopped early: the rest of the shard is not needed
            process.kill()
        else:
            failure = _command_failure(process, errors)
            if failure:
                raise DataError(f"shard {url} was not read to its end{failure}")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        errors.close()


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a tar member name, None if it has no extension."""
    match = _KEY_EXT.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


def describe_change(names: list[str], sizes: list[int], shards: ShardList) -> str:
    """'' when `shards` are the (names, sizes) an index was built from; else the first change,
    naming the shard (a resumed run must see the ids it was planned with)."""
    now_sizes = shards.sizes()
    for i, (old, new) in enumerate(zip(names, shards.names)):
        if old != new:
            return f"shard {i} was {old}, now {new}"
        if sizes[i] != now_sizes[i] and -1 not in (sizes[i], now_sizes[i]):
            return f"shard {new} changed: indexed at {sizes[i]} bytes, now {now_sizes[i]}"
    if len(names) != len(shards.names):
        longer = names if len(names) > len(shards.names) else shards.names
        gone = "is gone" if len(names) > len(shards.names) else "is new"
        return (f"the index holds {len(names)} shards, the source {len(shards.names)}: shard "
                f"{longer[min(len(names), len(shards.names))]} {gone}")
    return ""


def read_streamed(index, shard: int, ids: list[int], *, with_text: bool
                  ) -> Iterator[tuple[int, bytes, str]]:
    """(id, image bytes, caption) of the wanted `ids` (ascending, all in `shard`) of a pipe:
    shard, streamed from its start: other members are read and dropped undecoded. Every key is
    checked against the index; the command is stopped after the last wanted sample."""
    url, wanted = index.shard_urls[shard], set(ids)
    first, end = int(index.shard_starts[shard]), int(index.shard_starts[shard + 1])
    last = max(ids)
    current, key_now, image, text = -1, None, b"", ""

    def changed(what: str) -> DataError:
        return DataError(f"shard {url} changed since it was indexed ({index.path}): {what}; "
                         "ids would shift: restore the shard, or re-index and start afresh")

    with open_stream_tar(url) as tar:
        for member in tar:
            parts = split_member_name(member.name) if member.isfile() else None
            if parts is None:
                continue
            key, ext = parts
            if key != key_now:
                if current in wanted:
                    yield current, image, text
                if current == last:
                    return
                expected = current + 1 if current >= 0 else first
                if expected >= end or str(index.keys[expected]) != key:
                    have = str(index.keys[expected]) if expected < end else "no more samples"
                    raise changed(f"member key {key!r} where the index has {have!r}")
                current, key_now, image, text = expected, key, b"", ""
            if current not in wanted:
                continue  # pruned (or not this worker's): dropped before any decode
            if ext == str(index.image_ext[current]) and not image:
                image = tar.extractfile(member).read()
            elif ext == "txt" and with_text:
                text = tar.extractfile(member).read().decode("utf-8", errors="replace").strip()
        if current in wanted:
            yield current, image, text
        if current + 1 != end:
            raise changed(f"it ends after {current + 1 - first} samples, the index has "
                          f"{end - first}")


@dataclasses.dataclass
class _Sample:
    key: str
    image: tuple[int, int, str] | None = None  # (data offset, size, extension)
    text: tuple[int, int] | None = None        # (data offset, size)

    @property
    def reason(self) -> str:
        """Why the sample cannot serve image-text training ("" when it can)."""
        if self.image is None:
            return "no image member"
        if self.text is None:
            return "no .txt member"
        return "empty .txt" if self.text[1] == 0 else ""


def _scan_members(members, where: str) -> tuple[list[_Sample], int]:
    """Samples of a tar's members in order, and the end of the last member's data."""
    samples: list[_Sample] = []
    seen: set[str] = set()
    data_end = 0
    for member in members:
        data_end = max(data_end, member.offset_data + member.size)
        parts = split_member_name(member.name) if member.isfile() else None
        if parts is None:
            continue
        key, ext = parts
        if not samples or samples[-1].key != key:
            if key in seen:
                raise DataError(f"key {key!r} occurs twice in shard {where}, not as "
                                "consecutive members: rewrite the shard")
            seen.add(key)
            samples.append(_Sample(key))
        sample = samples[-1]
        if ext == "txt":
            sample.text = (member.offset_data, member.size)
        elif ext in IMAGE_EXTENSIONS and sample.image is None:
            sample.image = (member.offset_data, member.size, ext)
    return samples, data_end


def scan_shard(url: str) -> list[_Sample]:
    """The samples of one shard from its tar headers (a local file: no member data is read; a
    pipe: shard is streamed through once)."""
    if is_streamed(url):
        with open_stream_tar(url) as tar:
            return _scan_members(tar, url)[0]
    path = pathlib.Path(url)
    try:
        with tarfile.open(path, mode="r:") as tar:
            samples, data_end = _scan_members(tar, url)
            members_end = tar.offset
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read shard {path} as an uncompressed tar: {err}; rewrite it "
                        "(make_shards) or remove it from the folder") from err
    _check_complete(path, data_end, members_end)
    return samples


def _check_complete(path: pathlib.Path, data_end: int, members_end: int) -> None:
    """Refuse a shard cut short: tarfile stops silently at a truncated header, so a shard
    truncated before it was first indexed lost its tail with no word (issue 15, item 16). A
    complete tar holds every member's data and then its end marker (two 512-byte blocks)."""
    size = path.stat().st_size
    if data_end > size or members_end + 1024 > size:
        raise DataError(f"shard {path} is truncated: {size} bytes, its members and end marker "
                        f"need at least {max(data_end, members_end + 1024)}; the samples after "
                        "the cut are lost. Rewrite the shard (make_shards) or remove it from "
                        "the folder (ids are given per shard in order: decide before training)")
