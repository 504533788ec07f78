"""Compile a C source on first use with the system C compiler and cache the library.

Shared by the engine's kernels (``mooncake.engine.native``) and the store's block
checks (``mooncake.store.native``); torch-free, so the store and transfer layers can use
it. A library is cached under ``$MOONCAKE_KERNEL_CACHE`` (default
``~/.cache/mooncake/kernels``), keyed by the source, the flags, the compiler's version and
the CPU's feature flags (a cache on a shared home never hands one CPU a library built
for another), and written atomically (concurrent processes never load a half-written
file). ``ctypes`` calls release the GIL for the duration of the C function.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

DISABLE_ENV = "MOONCAKE_NATIVE_KERNELS"
"""Set to ``0`` to use no compiled code anywhere (every user has a pure fallback)."""


def cpu_flags() -> str:
    """The CPU's feature flags (``/proc/cpuinfo``), or the processor name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    root = os.environ.get("MOONCAKE_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mooncake" / "kernels"


def compiler() -> str | None:
    """The C compiler to use (``$CC``, else ``cc``/``gcc`` on the PATH), or ``None`` where
    native code is disabled or this platform is not one the sources are written for."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(
    source: Path, flags: Sequence[str], libs: Sequence[str] = (), cc: str | None = None
) -> Path:
    """The shared library built from ``source`` (from the cache when already built).

    Raises:
        RuntimeError: no compiler, or the compiler failed (its stderr in the message).
    """
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler (or native code disabled)")
    src = source.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        b"\0".join(
            [src, " ".join([*flags, *libs]).encode(), version.encode(), cpu_flags().encode()]
        )
    )
    out_dir = cache_dir()
    lib = out_dir / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent workers never load a half-written file.
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *flags, "-o", tmp, str(source), *libs], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def load(
    source: Path, flags: Sequence[str], libs: Sequence[str] = (), what: str = "native code"
) -> tuple[ctypes.CDLL, Path] | None:
    """Build (or find in the cache) and load ``source``; ``None``, with a log line saying
    why, where that is not possible (the caller then uses its pure fallback)."""
    cc = compiler()
    if cc is None:
        log.info(
            "%s: not built (needs Linux, a C compiler and %s != 0); using the fallback",
            what,
            DISABLE_ENV,
        )
        return None
    try:
        path = build(source, flags, libs, cc)
        return ctypes.CDLL(str(path)), path
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("%s unavailable, using the fallback: %s", what, e)
        return None


T = TypeVar("T")


class LoadOnce(Generic[T]):
    """A library built, loaded and bound on the first ``get()`` of any thread, then kept
    (``None`` where it is unavailable: that answer is kept too).

    Args:
        bind: wraps the loaded library and its path (ctypes signatures).
    """

    def __init__(
        self,
        source: Path,
        flags: Sequence[str],
        bind: Callable[[ctypes.CDLL, Path], T],
        libs: Sequence[str] = (),
        what: str = "native code",
    ) -> None:
        self._args = (source, list(flags), list(libs), what)
        self._bind = bind
        self._lock = threading.Lock()
        self._tried = False
        self._value: T | None = None

    def get(self) -> T | None:
        if self._tried:
            return self._value
        with self._lock:
            if not self._tried:
                source, flags, libs, what = self._args
                built = load(source, flags, libs, what=what)
                self._value = None if built is None else self._bind(*built)
                self._tried = True
            return self._value


__all__ = ["DISABLE_ENV", "LoadOnce", "build", "cache_dir", "compiler", "cpu_flags", "load"]
