"""A writer of newc cpio archives, the format the kernel unpacks as initramfs."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path


class Cpio:
    """A newc cpio archive (what the kernel unpacks as initramfs), written in order, deterministic."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", mtime: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name in self.names:
            return
        self.names.add(name)
        fields = [self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.ino += 1
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFREG | mode, data, mtime)

    def symlink(self, name: str, target: str) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def copy(self, name: str, host: str | Path, transform: Callable[[bytes], bytes] | None = None) -> None:
        """A host file (symlinks followed), keeping its permission bits and mtime."""
        st = os.stat(host)
        data = Path(host).read_bytes()
        self.file(name, transform(data) if transform else data, stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def tree(self, name: str, host: Path, skip: Callable[[Path], bool] = lambda p: False) -> None:
        for dirpath, dirnames, filenames in os.walk(host):
            d = Path(dirpath)
            rel = d.relative_to(host)
            self.dir(f"{name}/{rel}" if str(rel) != "." else name)
            for n in sorted(n for n in dirnames if (d / n).is_symlink() and not skip(d / n)):  # os.walk lists, never enters, them
                self.symlink(f"{name}/{rel}/{n}" if str(rel) != "." else f"{name}/{n}", os.readlink(d / n))
            dirnames[:] = sorted(n for n in dirnames if not skip(d / n) and not (d / n).is_symlink())
            for fn in sorted(filenames):
                p = d / fn
                if skip(p):
                    continue
                target = f"{name}/{rel}/{fn}" if str(rel) != "." else f"{name}/{fn}"
                if p.is_symlink():
                    self.symlink(target, os.readlink(p))
                else:
                    self.copy(target, p)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)
