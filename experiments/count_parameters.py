r"""Parameters of the model a training config describes, and of its bar VAE (nothing is initialised).

    python -m experiments.count_parameters --config=experiments/configs/sfs.py:paper
    # sfs (reference, paper): 57,313,563 trained parameters; bar VAE 33,171,995
    python -m experiments.count_parameters --config=experiments/configs/sfs.py:paper,arch=v1 --config.model_name=flat

Counts trained parameters only (``nnx.Param``): the fixed position tables and rotary
frequencies are state, not parameters, as in the authors' model.
"""

from __future__ import annotations

from absl import flags
from flax import nnx
from ml_collections import config_flags

from experiments import cli
from sfs_jax.model import bar_vae
from sfs_jax.model.sfs import SFSModel
from sfs_jax.training import tasks
from sfs_jax.training.train import parameter_count as state_parameter_count


def parameter_count(make) -> int:
    """Parameters of a module built abstractly (``nnx.eval_shape``: nothing is allocated)."""
    return state_parameter_count(nnx.state(nnx.eval_shape(make)))


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    config = flags.FLAGS.config
    model = tasks.model_config_from(config)
    name = tasks.model_name_of(config)
    vae = parameter_count(lambda: bar_vae.make_bar_vae(model, nnx.Rngs(0)))
    if name == "bar_vae":
        print(f"bar VAE ({config.get('model_arch', 'reference')}, {config.model_size}): {vae:,} parameters")
        return
    sfs = parameter_count(lambda: SFSModel(model, rngs=nnx.Rngs(0)))
    vae_text = f"; bar VAE {vae:,}" if model.use_global_view else ""
    print(f"{name} ({config.get('model_arch', 'reference')}, {config.model_size}): {sfs:,} trained parameters"
          f"{vae_text}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "experiments/configs/sfs.py:paper", "Training config file.")
    cli.run(main)
