"""The model that ships with the project: its folder, export -> materialize round trip, refusals, and
``experiments.generate`` composing with it when no checkpoint is given."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import bar_vae as vae_configs
from experiments.configs import sfs as sfs_configs
from sfs_jax.model import bar_vae
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music import audio
from sfs_jax.sampling.composer import load_composer
from sfs_jax.training import shipped
from sfs_jax.training.restore import load_trained, write_run
from tests.conftest import REPO_ROOT, soundfont_missing

MAX_SHIPPED_BYTES = 20_000_000


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SFS run and the bar VAE it names (random weights, written as training writes runs)."""
    root = tmp_path_factory.mktemp("tiny_run")
    sfs_config, vae_config = sfs_configs.get_config("size=tiny"), vae_configs.get_config("size=tiny")
    vae = bar_vae.make_bar_vae(model_config("tiny"), nnx.Rngs(1))
    write_run(root / "vae", vae, vae_config, {})
    sfs_config.vae_workdir, sfs_config.vae_fingerprint = str(root / "vae"), bar_vae.vae_fingerprint(vae)
    write_run(root / "sfs", SFSModel(model_config("tiny"), rngs=nnx.Rngs(2)), sfs_config, {})
    return root / "sfs"


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "tiny_model"
    shipped.export(tiny_run, out, {"trained_on": "nothing (random)"}, {"builder": "pop909", "manual_dir": "x"})
    return out


def test_the_repository_ships_a_model_within_its_budget() -> None:
    folder = shipped.shipped_dir()
    sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
    assert {"sfs.npz", "bar_vae.npz", "sfs_config.json", "bar_vae_config.json", "model_card.json"} <= set(sizes)
    assert sum(sizes.values()) <= MAX_SHIPPED_BYTES, sizes
    card = shipped.model_card()
    assert "POP909" in card["trained_on"] and card["licenses"] and all(name in sizes for name in card["licenses"])
    assert card["sfs_validation"]["bits_per_beat"] > 0 and card["parameters"]["sfs"] > 1_000_000
    config = json.loads((folder / "sfs_config.json").read_text())
    assert config["data"]["dataset_dir"] == "" and config["vae_workdir"] == shipped.VAE_SUBDIR


def test_export_then_materialize_gives_the_run_back(tiny_run: Path, exported: Path, tmp_path: Path) -> None:
    """Parameters come back bit for bit; the fixed tables are computed again; a second call reuses the run."""
    run = shipped.materialize(exported, root=tmp_path)
    composer, meta = load_composer(str(run))
    assert meta["step"] == 0  # the tiny run's own step, not the checkpoint slot
    original, _, _ = load_trained(tiny_run)
    restored = _params(composer.model)
    assert restored.keys() == _params(original).keys()
    assert all(np.array_equal(restored[key], value) for key, value in _params(original).items())
    assert composer.vae is not None  # the VAE in run/bar_vae, with the fingerprint the SFS config names
    saved = json.loads((exported / "sfs_config.json").read_text())
    assert saved["data"]["builder"] == "pop909" and saved["data"]["dataset_dir"] == ""
    stamp = (run / "shipped.json").stat().st_mtime_ns
    assert shipped.materialize(exported, root=tmp_path) == run and (run / "shipped.json").stat().st_mtime_ns == stamp
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left


def test_export_refuses_a_non_empty_folder(tiny_run: Path, exported: Path) -> None:
    with pytest.raises(FileExistsError, match="is not empty"):
        shipped.export(tiny_run, exported, {})


def test_damaged_copies_are_refused_and_nothing_is_materialized(exported: Path, tmp_path: Path) -> None:
    truncated = shutil.copytree(exported, tmp_path / "truncated")
    data = (truncated / "sfs.npz").read_bytes()
    (truncated / "sfs.npz").write_bytes(data[: len(data) // 2])
    missing = shutil.copytree(exported, tmp_path / "missing")
    (missing / "bar_vae_config.json").unlink()
    renamed = shutil.copytree(exported, tmp_path / "renamed")
    with np.load(exported / "sfs.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    key = sorted(arrays)[0]
    arrays[key + "_renamed"] = arrays.pop(key)
    np.savez(renamed / "sfs.npz", **arrays)
    cache = tmp_path / "cache"
    with pytest.raises(shipped.ShippedModelError, match=r"truncated/sfs\.npz cannot be read"):
        shipped.materialize(truncated, root=cache)
    with pytest.raises(shipped.ShippedModelError, match=r"has no bar_vae_config\.json"):
        shipped.materialize(missing, root=cache)
    with pytest.raises(shipped.ShippedModelError, match=r"does not fit sfs_config\.json: missing \["):
        shipped.materialize(renamed, root=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_generate_composes_with_the_shipped_model_by_default(tmp_path: Path) -> None:
    """The README's promise on a fresh clone: no checkpoint, no ../shared, a song in well under a minute of CPU."""
    out = tmp_path / "songs"
    env = {**os.environ, shipped.CACHE_ENV: str(tmp_path / "shipped"), "SFS_JAX_CACHE_DIR": str(tmp_path / "xla")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with_audio = soundfont_missing() is None
    result = subprocess.run([sys.executable, "-m", "experiments.generate", "--structure=A8 B8 A8 C4",
                             f"--out={out}", f"--audio={with_audio}"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"generate with the shipped model (materialize + compile + compose): "
          f"{after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime:.1f} s of CPU")
    import symusic

    score = symusic.Score(str(out / "song_0.mid"), ttype="quarter")
    notes = [note for track in score.tracks for note in track.notes]
    assert len(notes) > 50 and max(note.time for note in notes) < 28 * 4
    assert (out / "song_0.png").is_file()
    if with_audio:  # --audio: a WAV as long as the MIDI (plus the piano's release), not silence
        samples, rate = audio.read_wav(out / "song_0.wav")
        midi_seconds = symusic.Score(str(out / "song_0.mid"), ttype="second").end()
        assert abs(len(samples) / rate - midi_seconds) < 0.5
        assert np.sqrt(np.mean(samples ** 2)) > 1e-3
