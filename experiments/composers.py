"""Composers for the web server, its tests and its load benchmark: a checkpoint or an untrained preset.

No flags are defined here, so the server's main, the load benchmark and the tests
can all import it side by side (absl allows one definition of a flag per process).
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from experiments.configs.sfs import EXAMPLES_BY_SIZE
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model.bar_vae import make_bar_vae
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.sampling.composer import Composer, load_composer
from sfs_jax.sampling.segment import SamplingConfig


def random_composer(size: str, chunk_tokens: int, seed: int = 0) -> Composer:
    """An untrained SFS model and bar VAE of a preset size with that size's example config.

    Sampling speed and the serving protocol do not depend on the weights, so this
    serves tests, the load benchmark and UI work without a checkpoint.
    """
    config = model_config(size)
    examples = ExampleConfig(**EXAMPLES_BY_SIZE[size])
    model = SFSModel(config, rngs=nnx.Rngs(seed))
    vae = make_bar_vae(config, nnx.Rngs(seed + 1))
    return Composer(model, examples, vae, SamplingConfig(max_tokens=examples.target_buckets[-1]), chunk_tokens)


def composer_factory(checkpoint: str | Path, random_model: str, chunk_tokens: int):
    """A zero-argument factory, so loading and compiling happen on the worker thread after the port opens."""
    if random_model:
        return lambda: random_composer(random_model, chunk_tokens)
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is not a folder")
    return lambda: app_composer(path, chunk_tokens)


def app_composer(workdir: Path, chunk_tokens: int) -> Composer:
    """A checkpoint's composer, refused when it can only write left to right (the GPT-like Flat).

    The app fills and regenerates segments in any order the user picks, which a
    song-scope model cannot honour; the failure reaches /api/info and every queued job.
    """
    composer = load_composer(str(workdir), chunk_tokens=chunk_tokens)[0]
    if composer.left_to_right:
        raise ValueError(f"{workdir} holds a model that writes songs left to right (window_scope='song', the Flat "
                         "baseline); the app composes segments in any order: serve an SFS checkpoint, or compose "
                         "with python -m experiments.generate")
    return composer
