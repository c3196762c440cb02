"""Experiment configs (experiments/configs) and their mapping to the frozen model/example configs.

Properties proved here:
- ``common.parse_arg`` types ``key=value`` by the default's type, reads a bare word as a
  boolean flag or the ``size`` preset, and rejects unknown keys and stray words;
- ``sfs.py`` gives the paper/small/tiny presets and the Flat baseline, and rejects
  unknown sizes and models;
- ``--config.model.*`` command-line overrides (through ml_collections' config flags, as
  experiments/train.py parses them) reach ``ModelConfig`` via ``tasks.model_config_from``;
- a config saved as JSON in a checkpoint's meta (tuples become lists) rebuilds the same
  ``ModelConfig`` and ``ExampleConfig`` (what ``restore.load_trained`` relies on).
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from experiments.configs import ablate as ablate_configs
from experiments.configs import bar_vae as bar_vae_configs
from experiments.configs import common
from experiments.configs import sfs as sfs_configs
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model.config import PRESETS, model_config
from sfs_jax.model.flat import flat_config
from sfs_jax.training import tasks


def test_parse_arg_types_values_by_their_default() -> None:
    """``key=value`` takes the default's type; unset keys keep their defaults."""
    args = common.parse_arg("n=3,rate=0.5,name=x,on=false,off=yes,free=anything",
                            n=1, rate=1.0, name="a", on=True, off=False, free=None, kept=7)
    assert args.n == 3 and isinstance(args.n, int)
    assert args.rate == 0.5 and isinstance(args.rate, float)
    assert args.name == "x" and args.on is False and args.off is True and args.free == "anything"
    assert args.kept == 7
    assert common.parse_arg(None, size="small").size == "small"
    assert common.parse_arg("", size="small").size == "small"
    with pytest.raises(ValueError):
        common.parse_arg("n=three", n=1)


def test_parse_arg_bare_words() -> None:
    """A bare word sets a boolean default to True, else names the ``size`` preset (``sfs.py:paper``)."""
    assert common.parse_arg("runlocal", runlocal=False, size="small").runlocal is True
    assert common.parse_arg("paper", size="small").size == "paper"
    assert common.parse_arg("tiny,model=flat", size="small", model="sfs").to_dict() == {"size": "tiny",
                                                                                       "model": "flat"}
    with pytest.raises(ValueError, match="not key=value"):
        common.parse_arg("paper", model="sfs")


def test_parse_arg_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown config argument 'sise'"):
        common.parse_arg("sise=tiny", size="small")


@pytest.mark.parametrize("size", ["paper", "small", "tiny"])
def test_sfs_presets(size: str) -> None:
    """Each size maps to its ModelConfig preset and a valid ExampleConfig; paper computes in bf16."""
    config = sfs_configs.get_config(size)
    assert config.model_size == size and config.task == "sfs" and config.model_name == "sfs"
    model = tasks.model_config_from(config)
    assert model == model_config(size, compute_dtype=model.compute_dtype)
    assert model.context_slots == ("left", "right", "seed", "ref") and model.use_global_view
    assert model.compute_dtype == ("bfloat16" if size == "paper" else "float32")
    examples = tasks.example_config_from(config)
    assert isinstance(examples, ExampleConfig)
    assert examples == ExampleConfig(**{k: tuple(v) if isinstance(v, list | tuple) else v
                                        for k, v in sfs_configs.EXAMPLES_BY_SIZE[size].items()})
    # The authors' recipe by default; this project's first one (the size's batch and rate) by name.
    assert (config.train.recipe, config.train.batch_size, config.train.learning_rate) == ("reference", 6, 1e-4)
    assert config.train.loss_reduction == "sum_per_example" and config.train.clip_norm == 0
    v1 = sfs_configs.get_config(f"size={size},recipe=v1,arch=v1")
    assert v1.train.batch_size == sfs_configs.TRAIN_BY_SIZE[size]["batch_size"]
    assert v1.train.loss_reduction == "mean_per_head" and v1.train.b2 == 0.98
    assert tasks.model_config_from(v1) == model_config(size, "v1", compute_dtype=model.compute_dtype)
    assert config.data.num_songs == (64 if size == "tiny" else 512)
    assert sfs_configs.get_config(f"size={size}").to_dict() == config.to_dict()


def test_flat_and_bad_arguments() -> None:
    """``model=flat`` is the paper's Flat baseline of the same size; bad sizes or models fail."""
    config = sfs_configs.get_config("size=tiny,model=flat")
    assert config.model_name == "flat"
    assert tasks.model_config_from(config) == flat_config(model_config("tiny"))
    assert not tasks.model_config_from(config).use_cross_attention
    with pytest.raises(ValueError, match="size must be one of"):
        sfs_configs.get_config("size=huge")
    with pytest.raises(ValueError, match="model must be sfs or flat"):
        sfs_configs.get_config("model=gpt")


def test_flat_is_gpt_like_and_song_windows_refuse_a_model_with_contexts(tmp_path) -> None:
    """``model=flat`` (or ``--config.model_name=flat``) trains on song-scope windows, SFS on segment
    windows; SFS on song windows would cross-attend to nothing; a saved config without the field is segment."""
    from experiments import pipeline

    scope = lambda config: tasks.example_config_from(config).window_scope
    assert scope(sfs_configs.get_config("size=tiny,model=flat")) == "song"
    assert scope(sfs_configs.get_config("size=tiny")) == "segment"
    renamed = sfs_configs.get_config("size=tiny")
    renamed.model_name = "flat"
    assert scope(renamed) == "song"
    old = sfs_configs.get_config("size=tiny,model=flat")
    del old.examples["window_scope"]
    assert scope(old) == "segment"
    config = sfs_configs.get_config("size=tiny")
    config.examples.window_scope = "song"
    config.data.data_dir = str(tmp_path / "data")
    with pytest.raises(ValueError, match="builds no contexts"):
        pipeline.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_model_name_override_that_names_no_model_is_refused(tmp_path) -> None:
    """``--config.model_name=flat_4k`` once trained SFS silently; now it stops before any work."""
    from experiments import pipeline

    config = sfs_configs.get_config("size=tiny,model=flat")
    config.model_name = "flat_4k"
    with pytest.raises(ValueError, match="model_name must be one of"):
        tasks.model_config_from(config)
    config.data.data_dir = str(tmp_path / "data")
    with pytest.raises(ValueError, match="model_name must be one of"):
        pipeline.run(config, str(tmp_path / "run"))
    assert not any(tmp_path.iterdir())  # no dataset built, no workdir made


def test_saved_config_with_a_label_for_model_name_loads_as_the_sfs_it_trained(tmp_path) -> None:
    from sfs_jax.training.restore import upgrade_saved_config

    saved = sfs_configs.get_config("size=tiny")
    saved.model_name = "sfs_segment_4k"  # what older code wrote and trained as SFS
    upgraded = upgrade_saved_config(ml_collections.ConfigDict(saved.to_dict()), tmp_path)
    assert upgraded.model_name == "sfs" and tasks.model_config_from(upgraded) == model_config("tiny")
    flat = sfs_configs.get_config("size=tiny,model=flat")
    assert upgrade_saved_config(flat, tmp_path).model_name == "flat"
    vae = bar_vae_configs.get_config("size=tiny")
    assert upgrade_saved_config(vae, tmp_path).model_name == "bar_vae"


@pytest.mark.parametrize("size", ["paper", "small", "tiny"])
def test_bar_vae_presets(size: str) -> None:
    """The bar VAE config of each size trains the VAE of the same model preset."""
    config = bar_vae_configs.get_config(f"size={size}")
    assert config.task == "bar_vae"
    assert tasks.model_config_from(config).vae == model_config(size).vae
    assert config.vae_beta_cycle_steps >= 1 and config.vae_max_beta == 0.1


def _parse_command_line(*overrides: str) -> ml_collections.ConfigDict:
    """The config as ``experiments/train.py`` would receive it from this command line."""
    argv = ["train", "--config=experiments/configs/sfs.py:size=tiny", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_command_line_model_overrides_reach_model_config() -> None:
    """``--config.model.context_slots=('left','seed')`` and friends change the ModelConfig built from it."""
    config = _parse_command_line("--config.model.context_slots=('left','seed')",
                                 "--config.model.use_global_view=False", "--config.train.num_steps=7")
    model = tasks.model_config_from(config)
    assert model.context_slots == ("left", "seed")
    assert not model.use_global_view
    assert model.d_model == PRESETS["tiny"]["d_model"]
    assert config.train.num_steps == 7
    assert tasks.model_config_from(_parse_command_line("--config.model.context_slots=()")).context_slots == ()
    with pytest.raises(ValueError, match="unknown context slots"):
        tasks.model_config_from(_parse_command_line("--config.model.context_slots=('left','middle')"))
    zero_g = tasks.model_config_from(_parse_command_line("--config.model.zero_init_paths=('global_view',)"))
    assert zero_g.zero_init_paths == ("global_view",)
    # Every ExampleConfig field is in the config, so each can be overridden too.
    aligned = _parse_command_line("--config.examples.ref_crop=aligned", "--config.examples.max_song_bars=128")
    examples = tasks.example_config_from(aligned)
    assert (examples.ref_crop, examples.max_song_bars) == ("aligned", 128)
    with pytest.raises(ValueError, match="unknown zero_init_paths"):
        tasks.model_config_from(_parse_command_line("--config.model.zero_init_paths=('encoder',)"))


def test_config_survives_the_checkpoint_json_round_trip() -> None:
    """A config stored as JSON (tuples -> lists) rebuilds equal ModelConfig and ExampleConfig."""
    for arg in ("size=tiny", "size=small,model=flat", "paper"):
        config = sfs_configs.get_config(arg)
        config.model.context_slots = ("seed", "left")
        restored = ml_collections.ConfigDict(json.loads(json.dumps(config.to_dict())))
        assert isinstance(restored.model.context_slots, list)
        assert tasks.model_config_from(restored) == tasks.model_config_from(config)
        assert tasks.example_config_from(restored) == tasks.example_config_from(config)


@pytest.mark.parametrize("sweep", sorted(ablate_configs.SWEEPS))
def test_every_sweep_variant_is_a_valid_distinct_config(sweep: str) -> None:
    """Each variant's overrides land in real fields: its model and example configs build, names are unique,
    and no two variants describe the same model."""
    base = sfs_configs.get_config("size=tiny")
    runs = ablate_configs.variants(base, sweep)
    names = [name for name, _ in runs]
    assert len(names) == len(set(names)) and "flat" in names
    built = [(tasks.model_config_from(config), tasks.example_config_from(config), config.train.recipe,
              config.train.loss_reduction) for _, config in runs]
    assert len(set(built)) == len(built)
    by_name = dict(zip(names, built, strict=True))
    if sweep == "departures":
        reference = by_name["reference"][0]
        assert reference == tasks.model_config_from(base)
        assert by_name["reference"][2:] == ("reference", "sum_per_example")
        assert by_name["full_rotary"][0] == dataclasses.replace(reference, rotary_dims=reference.head_dim)
        assert by_name["v1_input_scale_zero_init"][0].position_code == "learned"
        assert by_name["mean_per_head_loss"][0] == reference and by_name["mean_per_head_loss"][3] == "mean_per_head"
        assert by_name["v1"][0] == model_config("tiny", "v1") and by_name["v1"][2:] == ("v1", "mean_per_head")
    if sweep == "context":
        assert by_name["sfs_segment_positions"][0].cross_attention_positions == "segment"
        assert by_name["no_ref"][0].context_slots == ("left", "right", "seed")
        assert by_name["sfs_segment_aligned_ref"][1].ref_crop == "aligned"
    if sweep == "init":
        assert by_name["zero_G_segment"][0].zero_init_paths == ("global_view",)
        assert by_name["random_song"][0].zero_init_paths == ()
    assert base.model.context_slots == ("left", "right", "seed", "ref")  # the base is not mutated


def test_sweep_override_of_a_missing_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt override must not train the base config under the variant's name."""
    monkeypatch.setitem(ablate_configs.SWEEPS, "typo", lambda add: add("x", **{"examples.ref_cropp": "aligned"}))
    with pytest.raises(KeyError, match=r"examples\.ref_cropp"):
        ablate_configs.variants(sfs_configs.get_config("size=tiny"), "typo")
