"""The object store for large state values: any fsspec URL (file:// on a shared volume in tests,
s3:// in production).

Values are written with pickle protocol 5 and out-of-band buffers, so an array's memory is
written straight from its buffer, each buffer at a page-aligned offset. On a local filesystem a
reader maps the file copy-on-write: the value's buffers are the page cache's pages, and a page is
copied only when the user writes to it. Elsewhere each buffer is read straight into a fresh one.

An object appears under its URL only once it is whole (written under a temporary name, then
renamed), so a reader that sees it never reads a torn value. A write that fails leaves
``<url>.failed`` holding the reason, so readers waiting for the object stop waiting.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import fsspec
from fsspec.implementations.local import LocalFileSystem

_HEADER = struct.Struct("<4sQQ")  # magic, pickle length, buffer count
_LEN = struct.Struct("<QQ")  # buffer length, offset of its data in the file
_MAGIC = b"NBS2"
_ALIGN = mmap.PAGESIZE
_FAILED = ".failed"


class ObjectMissing(RuntimeError):
    """A state object that is not in the store and will not be: its writer failed or is gone."""


def _pad(n: int) -> int:
    return -n % _ALIGN


@dataclass
class PendingWrite:
    """One value pickled and laid out, its buffers not yet written (they are the value's own
    memory, so the value must not change until `write` returns)."""

    store: ObjectStore
    url: str
    head: bytes
    buffers: list[memoryview]
    size: int = 0
    done: bool = False
    error: str | None = field(default=None)

    def write(self) -> None:
        """Write the object whole, or leave the reason it failed beside its URL."""
        fs, path = self.store.fs, self.store.path(self.url)
        tmp = f"{path}.part-{os.getpid()}"
        try:
            offsets, pos = [], _HEADER.size + len(self.head) + _LEN.size * len(self.buffers)
            for b in self.buffers:
                pos += _pad(pos)
                offsets.append(pos)
                pos += b.nbytes
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(tmp, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, len(self.head), len(self.buffers)))
                f.write(self.head)
                for b, off in zip(self.buffers, offsets, strict=True):
                    f.write(_LEN.pack(b.nbytes, off))
                at = _HEADER.size + len(self.head) + _LEN.size * len(self.buffers)
                for b, off in zip(self.buffers, offsets, strict=True):
                    f.write(b"\0" * (off - at))
                    f.write(b)
                    at = off + b.nbytes
            fs.mv(tmp, path)
            self.size = pos
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            try:
                with fs.open(path + _FAILED, "w") as f:
                    f.write(self.error)
            except Exception:
                pass
            raise
        finally:
            self.done = True
            self.buffers = []  # the value's memory is no longer needed here


class ObjectStore:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def _url(self, key: str) -> str:
        return f"{self.url}/{key}"

    def path(self, url: str) -> str:
        """The store filesystem's path of one of its URLs."""
        return f"{self.root}/{url[len(self.url) + 1 :]}" if url.startswith(self.url + "/") else url

    def prepare(self, key: str, obj: Any) -> PendingWrite:
        """Pickle one value for `write` later; cheap: the buffers are referenced, not copied."""
        buffers: list[pickle.PickleBuffer] = []
        head = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        size = _HEADER.size + len(head) + sum(_LEN.size + _ALIGN + r.nbytes for r in raws)
        return PendingWrite(self, self._url(key), head, raws, size)

    def put(self, key: str, obj: Any) -> tuple[str, int]:
        """Write one value now; returns its URL and the bytes written."""
        pending = self.prepare(key, obj)
        pending.write()
        return pending.url, pending.size

    def put_bytes(self, key: str, data: bytes) -> str:
        url = self._url(key)
        with fsspec.open(url, "wb", auto_mkdir=True) as f:
            f.write(data)
        return url

    @staticmethod
    def get_bytes(url: str) -> bytes:
        with fsspec.open(url, "rb") as f:
            return f.read()

    @staticmethod
    def get(url: str, give_up: Callable[[], str | None] | None = None, timeout: float = 3600.0) -> Any:
        """Read one value, waiting for it while its writer may still be writing it: until it is
        there, its write failed, ``give_up`` gives a reason, or ``timeout``."""
        fs, path = fsspec.core.url_to_fs(url)
        end, pause = time.monotonic() + timeout, 0.001
        while not fs.exists(path):
            if fs.exists(path + _FAILED):
                with fs.open(path + _FAILED, "r") as f:
                    raise ObjectMissing(f"saving it failed: {f.read()}")
            why = give_up() if give_up is not None else None
            if (why or time.monotonic() > end) and not fs.exists(path):
                raise ObjectMissing(why or f"it was not saved within {timeout:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if isinstance(fs, LocalFileSystem):
            return _map(path)
        with fs.open(path, "rb") as f:
            magic, hlen, count = _HEADER.unpack(f.read(_HEADER.size))
            if magic != _MAGIC:
                raise ValueError(f"{url} is not a NotebookOS state object")
            head = f.read(hlen)
            layout = [_LEN.unpack(f.read(_LEN.size)) for _ in range(count)]
            bufs = []
            for n, off in layout:
                f.seek(off)
                buf = bytearray(n)
                view, got = memoryview(buf), 0
                while got < n:
                    k = f.readinto(view[got:])
                    if not k:
                        raise ValueError(f"{url} is truncated")
                    got += k
                bufs.append(buf)
        return pickle.loads(head, buffers=bufs)

    def delete_prefix(self, key: str) -> None:
        try:
            self.fs.rm(f"{self.root}/{key}", recursive=True)
        except FileNotFoundError:
            pass


def _map(path: str) -> Any:
    """Load from a local file mapped copy-on-write: no read, no copy until a page is written."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None
    if mm is None:
        raise ValueError(f"{path} is empty")
    view = memoryview(mm)
    magic, hlen, count = _HEADER.unpack_from(view, 0)
    if magic != _MAGIC:
        raise ValueError(f"{path} is not a NotebookOS state object")
    at = _HEADER.size
    head = bytes(view[at : at + hlen])
    at += hlen
    bufs = []
    for _ in range(count):
        n, off = _LEN.unpack_from(view, at)
        at += _LEN.size
        if off + n > size:
            raise ValueError(f"{path} is truncated")
        bufs.append(view[off : off + n])
    return pickle.loads(head, buffers=bufs)
