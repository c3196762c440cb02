r"""Start-up of ``experiments.generate`` with a ``paper``-size checkpoint: first call vs second call.

    python -m benchmarks.generate_startup            # paper size, about 3 minutes on 2 cores

Writes a random-init ``paper`` SFS run and its bar VAE (as training writes runs:
orbax, model and optimizer state) into a temporary folder, then runs the command a
musician runs, twice, each in a fresh process with the same empty persistent
compilation cache (``$SFS_JAX_CACHE_DIR``):

    python -m experiments.generate --checkpoint=RUN --structure=... --out=...

and prints each call's process wall time, the model load (``load_seconds`` of its
report) and composing time (compilation, or reading it from the cache, included).
The first call compiles; the second reads every program from the cache, which is
the start-up a musician sees after the first song on a machine. ``--structure=A1``
(the default) writes one bar (about 60 tokens, well under a second of decoding), so
its wall time is start-up: interpreter and imports, model load, compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags
from flax import nnx

from experiments import cli
from experiments.configs import bar_vae as vae_configs
from experiments.configs import sfs as sfs_configs
from sfs_jax.model import bar_vae
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.training.restore import write_run

_SIZE = flags.DEFINE_enum("size", "paper", ["tiny", "small", "paper"], "Model preset.")
_STRUCTURES = flags.DEFINE_list("structures", ["A1", "A8 B8 A8 C4"], "Structures to generate, each twice.")


def write_runs(root: Path, size: str) -> Path:
    """A random-init SFS run of ``size`` and the bar VAE it names; returns the SFS run."""
    sfs_config, vae_config = sfs_configs.get_config(f"size={size}"), vae_configs.get_config(f"size={size}")
    vae = bar_vae.make_bar_vae(model_config(size), nnx.Rngs(1))
    write_run(root / "vae", vae, vae_config, {})
    sfs_config.vae_workdir, sfs_config.vae_fingerprint = str(root / "vae"), bar_vae.vae_fingerprint(vae)
    write_run(root / "sfs", SFSModel(model_config(size), rngs=nnx.Rngs(2)), sfs_config, {})
    return root / "sfs"


def generate(run: Path, structure: str, out: Path, cache: Path) -> dict:
    """One ``experiments.generate`` process; its report plus the process wall time."""
    env = {**os.environ, cli.CACHE_ENV: str(cache)}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "experiments.generate", f"--checkpoint={run}", f"--structure={structure}",
                    f"--out={out}"], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    return {**json.loads((out / "report.json").read_text()), "wall_seconds": wall}


def main(argv: list[str]) -> None:
    del argv
    cli.quiet_by_default()
    with tempfile.TemporaryDirectory(prefix="sfs-startup-") as folder:
        root = Path(folder)
        began = time.perf_counter()
        run = write_runs(root, _SIZE.value)
        print(f"wrote a random-init {_SIZE.value} SFS run and bar VAE in {time.perf_counter() - began:.1f} s")
        for index, structure in enumerate(_STRUCTURES.value):
            cache = root / f"cache{index}"
            for call in (1, 2):
                report = generate(run, structure, root / f"out{index}_{call}", cache)
                print(f"{structure!r} call {call} ({'cold' if call == 1 else 'warm'} compilation cache): "
                      f"{report['wall_seconds']:6.1f} s process wall; model load {report['load_seconds']:5.1f} s; "
                      f"composing {report['seconds']:6.1f} s ({report['beats_per_second']:.2f} beats/s, "
                      f"compilation included)")


if __name__ == "__main__":
    app.run(main)
