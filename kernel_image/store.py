"""The object store for large state values: any fsspec URL (file:// on a shared volume in tests,
s3:// in production).

Values are written with pickle protocol 5 and out-of-band buffers, so an array's memory is
written straight from its buffer and read straight into a fresh one (no extra copy of the data).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import cloudpickle
import fsspec

_HEADER = struct.Struct("<4sQQ")  # magic, pickle length, buffer count
_LEN = struct.Struct("<Q")
_MAGIC = b"NBS1"


class ObjectStore:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def _url(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put(self, key: str, obj: Any) -> tuple[str, int]:
        """Write one value; returns its URL and the bytes written."""
        buffers: list[pickle.PickleBuffer] = []
        head = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        url = self._url(key)
        size = 0
        with fsspec.open(url, "wb", auto_mkdir=True) as f:
            f.write(_HEADER.pack(_MAGIC, len(head), len(buffers)))
            f.write(head)
            size += _HEADER.size + len(head)
            for b in buffers:
                raw = b.raw()
                f.write(_LEN.pack(raw.nbytes))
                f.write(raw)
                size += _LEN.size + raw.nbytes
        return url, size

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
    def get(url: str) -> Any:
        with fsspec.open(url, "rb") as f:
            magic, hlen, count = _HEADER.unpack(f.read(_HEADER.size))
            if magic != _MAGIC:
                raise ValueError(f"{url} is not a NotebookOS state object")
            head = f.read(hlen)
            bufs = []
            for _ in range(count):
                (n,) = _LEN.unpack(f.read(_LEN.size))
                buf = bytearray(n)
                view = memoryview(buf)
                got = 0
                while got < n:
                    k = f.readinto(view[got:]) if hasattr(f, "readinto") else None
                    if k is None:
                        chunk = f.read(n - got)
                        view[got : got + len(chunk)] = chunk
                        k = len(chunk)
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
