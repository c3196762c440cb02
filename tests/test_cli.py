"""What every command sets up: the persistent compilation cache (on by default, overridable) and quiet logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

PROGRAM = """
import jax, jax.numpy as jnp
from absl import app
from experiments.cli import prepare

def main(argv):
    prepare()
    folder = jax.config.jax_compilation_cache_dir
    jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(1000.0)).block_until_ready()
    from absl import logging
    logging.info("an INFO record")
    logging.warning("a warning")
    print("CACHE", folder)

app.run(main)
"""


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    return subprocess.run([sys.executable, "-c", PROGRAM, *args], cwd=REPO_ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


def test_compilation_cache_is_on_by_default_and_overridable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    default = _run({"HOME": str(home)})
    assert default.returncode == 0, default.stderr[-2000:]
    folder = home / ".cache" / "sfs_jax" / "xla"
    assert f"CACHE {folder}" in default.stdout and any(folder.iterdir())  # the program was written there
    chosen = _run({"HOME": str(home), "SFS_JAX_CACHE_DIR": str(tmp_path / "mine")})
    assert f"CACHE {tmp_path / 'mine'}" in chosen.stdout and any((tmp_path / "mine").iterdir())
    other_home = tmp_path / "other_home"
    off = _run({"HOME": str(other_home), "SFS_JAX_CACHE_DIR": "off"})
    assert off.returncode == 0 and "CACHE None" in off.stdout
    assert not (other_home / ".cache").exists() and not (tmp_path / "off").exists()


def test_logs_are_quiet_unless_asked(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "SFS_JAX_CACHE_DIR": "off"}
    quiet = _run(env)
    assert "a warning" in quiet.stderr and "an INFO record" not in quiet.stderr
    verbose = _run(env, "--verbosity=0")
    assert "an INFO record" in verbose.stderr
