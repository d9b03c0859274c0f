"""vlps's compiled TensorFlow kernels: built from `vlps/kernels/` against the installed
TensorFlow, loaded with `tf.load_op_library`.

`scripts/install.sh` builds them (`BUILD_COMMAND`). The library's file name carries a
digest of the sources, the TensorFlow version and the compiler flags, so a changed source or a
TensorFlow upgrade gets a new build instead of a stale or ABI-incompatible one; `ops()` builds
it on first use when the package folder is writable, and otherwise says what to run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "kernels" / "hash_table.cc", HERE / "kernels" / "unique.cc",
           HERE / "kernels" / "dense_apply.cc", HERE / "kernels" / "gather.cc"]
HEADERS = [HERE / "kernels" / "mix.h", HERE / "kernels" / "rules.h"]
# -fno-math-errno: std::sqrt need not set errno, so the optimizer loops vectorise (sqrtps);
# IEEE square root and division are correctly rounded either way (same bits).
_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-O3", "-fno-math-errno", "-Wall",
          "-Wno-sign-compare"]
_loaded: Any = None
BUILD_COMMAND = "python -c 'import vlps.native as n; n.build()'"


class KernelBuildError(RuntimeError):
    pass


def _tf_flags() -> tuple[list[str], list[str], str]:
    import tensorflow as tf

    return tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags(), tf.__version__


def library_path() -> Path:
    """Where the library for these sources and this TensorFlow lives (built or not)."""
    cflags, lflags, version = _tf_flags()
    digest = hashlib.sha256()
    for src in [*SOURCES, *HEADERS]:
        digest.update(src.read_bytes())
    digest.update(" ".join([version, *cflags, *lflags, *_FLAGS]).encode())
    return HERE / f"_vlps_kernels-{digest.hexdigest()[:16]}.so"


def build(verbose: bool = True) -> Path:
    """Compile the kernels if this build is missing; returns the library's path."""
    lib = library_path()
    if lib.exists():
        return lib
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise KernelBuildError(
            "vlps: no C++ compiler found to build the hash-table kernel (vlps/kernels/); "
            "install g++ (Debian: apt-get install g++) or set CXX, then run "
            f"`{BUILD_COMMAND}` with {sys.executable}")
    if not os.access(HERE, os.W_OK):
        raise KernelBuildError(
            f"vlps: the hash-table kernel is not built and {HERE} is not writable by this "
            "account; whoever installed the platform builds it: scripts/install.sh does, or "
            f"`{BUILD_COMMAND}` with {sys.executable}")
    cflags, lflags, _ = _tf_flags()
    with open(HERE / ".kernels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if lib.exists():
            return lib
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, *_FLAGS, f"-I{HERE.parent}", *map(str, SOURCES), "-o", str(tmp),
               *cflags, *lflags]
        if verbose:
            print(f"vlps: compiling the hash-table kernel (10-60 s): {lib.name}",
                  file=sys.stderr, flush=True)
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise KernelBuildError(
                f"vlps: compiling {', '.join(s.name for s in SOURCES)} failed "
                f"(exit {done.returncode}):\n{done.stderr[-4000:]}\ncommand: {' '.join(cmd)}")
        tmp.replace(lib)
        for old in HERE.glob("_vlps_kernels-*.so"):
            if old != lib:
                old.unlink(missing_ok=True)
        if verbose:
            print(f"vlps: built {lib.name} in {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)
    return lib


def unique(ids: Any) -> tuple[Any, Any]:
    """`tf.unique` of 1-D int64 ids (same outputs, int32 indices), by vlps's kernel."""
    return tuple(ops().vlps_unique(ids))


def ops() -> Any:
    """The loaded op library (built first if needed)."""
    global _loaded
    if _loaded is None:
        import tensorflow as tf

        _loaded = tf.load_op_library(str(build()))
    return _loaded

