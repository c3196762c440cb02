"""What every command sets up first: quiet logs, the persistent compilation cache, short usage errors.

- Quiet by default: a command shows results, progress lines, warnings and errors, not
  library INFO records (orbax writes several per checkpoint save and restore).
  ``--verbosity=0`` (absl's flag) brings them back.
- The persistent compilation cache: XLA programs compiled once on a machine are read
  back by every later command (a second ``generate``, ``serve`` or ``evaluate`` of the
  same model starts in seconds instead of compiling again). The folder is
  ``$SFS_JAX_CACHE_DIR``, else ``~/.cache/sfs_jax/xla``; ``SFS_JAX_CACHE_DIR=off``
  switches it off. A cache dir already configured (``JAX_COMPILATION_CACHE_DIR``) is kept.
- Usage errors (``app.UsageError``) print their reason on one line (``run``), not
  after the whole flag list as absl does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
from absl import app, flags, logging

CACHE_ENV = "SFS_JAX_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/sfs_jax/xla")


def compilation_cache_dir() -> Path | None:
    """The persistent cache folder this process uses (None: switched off)."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() == "off":
        return None
    return Path(chosen or DEFAULT_CACHE_DIR).expanduser()


def enable_compilation_cache() -> Path | None:
    """Points JAX's persistent compilation cache at ``compilation_cache_dir()`` unless one is set already."""
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    folder = compilation_cache_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program: many small ones (window starts, the VAE embedder) add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder


def quiet_by_default() -> None:
    """Warnings and errors only, unless ``--verbosity`` was given on the command line."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def prepare(quiet: bool = True) -> None:
    """The start of every command's ``main``: quiet logs (unless ``quiet=False``) and the compilation cache."""
    if quiet:
        quiet_by_default()
    enable_compilation_cache()


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` with a usage error told reason first: one line, not after the whole flag list."""

    def reasons_first(argv: list[str]) -> None:
        try:
            main(argv)
        except app.UsageError as err:
            print(f"error: {err}\n(--help lists the flags)", file=sys.stderr)
            sys.exit(2)

    app.run(reasons_first)
