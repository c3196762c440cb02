"""Training as several processes on loopback: JAX's multi-process runtime (``jax.distributed``, gloo on CPUs).

The normal entry point (``python -m experiments.train``) runs as two processes with one
CPU device each, and as one process with two forced devices (the same mesh):

- the two processes train the single process's curve (each reads its own rows of every
  global batch; losses agree to float rounding);
- only process 0 writes metrics and progress lines;
- a checkpoint the two processes wrote together resumes in one process, and one that
  one process wrote resumes in two, both continuing the uninterrupted curve.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sfs_jax.training.metrics_writer import read_metrics
from tests.conftest import REPO_ROOT

TIMEOUT_S = 900
RTOL = 1e-5  # measured: processes 0 (bit for bit); fsdp 2.8e-8 (the split changes the summation order)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, forced_devices: int = 0) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SFS_JAX_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    if forced_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={forced_devices}"
    return env


def _train_args(dataset: Path, workdir: Path, steps: int, vae: Path | None = None) -> list[str]:
    """The tiny SFS run's command; with ``vae`` the global view G is on and reads that VAE's bar embeddings."""
    view = ["--config.model.use_global_view=True", f"--config.vae_workdir={vae}"] if vae else [
        "--config.model.use_global_view=False"]
    return [sys.executable, "-m", "experiments.train", "--config=experiments/configs/sfs.py:size=tiny", *view,
            f"--config.data.dataset_dir={dataset}",
            f"--config.train.num_steps={steps}", "--config.train.batch_size=4", "--config.train.learning_rate=3e-3",
            "--config.train.schedule=constant", "--config.train.eval_every=100", "--config.train.checkpoint_every=2",
            "--config.train.log_every=1", "--config.train.eval_batches=1", f"--workdir={workdir}"]


class Run:
    """One training run as ``processes`` processes (1: one process with two forced CPU devices)."""

    def __init__(self, dataset: Path, workdir: Path, steps: int, processes: int, cache: Path,
                 *extra_flags: str, vae: Path | None = None) -> None:
        self.workdir, self.processes = workdir, processes
        env = _env(cache, forced_devices=2 if processes == 1 else 0)
        port = _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for index in range(processes):
            extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                      f"--process_id={index}"] if processes > 1 else [])
            log = open(workdir.parent / f"{workdir.name}.p{index}.log", "w")  # closed in wait()
            command = [*_train_args(dataset, workdir, steps, vae), *extra, *extra_flags]
            self.procs.append((subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                               log))

    def wait(self) -> list[str]:
        """Waits for every process; returns their logs (an error names the failing one)."""
        logs = []
        for index, (proc, log) in enumerate(self.procs):
            code = proc.wait(timeout=TIMEOUT_S)
            log.close()
            text = Path(log.name).read_text()
            assert code == 0, f"{self.workdir.name} process {index} exited {code}: {text[-3000:]}"
            logs.append(text)
        return logs

    def losses(self) -> dict[int, float]:
        rows = read_metrics(self.workdir, "train")
        steps = [row["step"] for row in rows]
        assert len(steps) == len(set(steps)), f"metrics written more than once: {steps}"
        return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def runs(tiny_synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("multiprocess")
    cache = root / "xla_cache"
    first = {"one_4": Run(tiny_synthetic_dataset, root / "one_4", 4, 1, cache),
             "two_2": Run(tiny_synthetic_dataset, root / "two_2", 2, 2, cache),
             "one_2": Run(tiny_synthetic_dataset, root / "one_2", 2, 1, cache),
             # The weights and Adam moments split over both devices (one process), and over both processes.
             "one_4_fsdp": Run(tiny_synthetic_dataset, root / "one_4_fsdp", 4, 1, cache, "--config.mesh.fsdp=2"),
             "two_4_fsdp": Run(tiny_synthetic_dataset, root / "two_4_fsdp", 4, 2, cache, "--config.mesh.fsdp=2")}
    logs = {name: run.wait() for name, run in first.items()}
    # Resume each 2-step run in the other process count, to 4 steps.
    resumed = {name: shutil.copytree(root / source, root / name)
               for name, source in (("two_then_one", "two_2"), ("one_then_two", "one_2"))}
    second = {"two_then_one": Run(tiny_synthetic_dataset, resumed["two_then_one"], 4, 1, cache),
              "one_then_two": Run(tiny_synthetic_dataset, resumed["one_then_two"], 4, 2, cache)}
    logs.update({name: run.wait() for name, run in second.items()})
    all_runs = {**first, **second}
    for name, run in all_runs.items():
        run.logs = logs[name]
    return all_runs


def test_two_processes_train_the_one_process_curve(runs: dict[str, Run]) -> None:
    reference = runs["one_4"].losses()
    two = runs["two_2"].losses()
    print(f"one process (2 devices): {reference}; two processes: {two}; largest relative difference "
          f"{max(abs(two[s] / reference[s] - 1) for s in two):.1e}")
    assert sorted(reference) == [1, 2, 3, 4] and sorted(two) == [1, 2]
    np.testing.assert_allclose([two[s] for s in (1, 2)], [reference[s] for s in (1, 2)], rtol=RTOL)
    assert reference[4] < reference[1]  # it learns


def test_only_process_zero_reports(runs: dict[str, Run]) -> None:
    process_0, process_1 = runs["two_2"].logs
    assert "[sfs] step 2/2" in process_0 and "[sfs] validation step 2" in process_0
    assert "[sfs] step" not in process_1
    assert "process 1 of 2" not in process_0  # INFO stays quiet by default
    assert (runs["two_2"].workdir / "final_metrics.json").is_file()
    assert len(list((runs["two_2"].workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_partial_process_spec_is_refused_before_joining() -> None:
    from sfs_jax.training import distributed

    with pytest.raises(ValueError, match="give --coordinator_address, --num_processes and --process_id together"):
        distributed.initialize("127.0.0.1:1", num_processes=2)


@pytest.mark.parametrize("name", ["one_4_fsdp", "two_4_fsdp"])
def test_fsdp_trains_the_unsharded_curve(runs: dict[str, Run], name: str) -> None:
    """With mesh.fsdp=2 the kernels and embedding tables (and their Adam moments) are split between the two
    devices, in one process or across two; the losses are the replicated run's."""
    reference, sharded = runs["one_4"].losses(), runs[name].losses()
    print(f"{name}: {sharded}; largest relative difference "
          f"{max(abs(sharded[s] / reference[s] - 1) for s in sharded):.1e}")
    assert sorted(sharded) == [1, 2, 3, 4]
    np.testing.assert_allclose([sharded[s] for s in (1, 2, 3, 4)], [reference[s] for s in (1, 2, 3, 4)], rtol=RTOL)
    split = re.search(r"mesh data=1 fsdp=2: ([0-9.]+)% of the parameter bytes", runs[name].logs[0])
    assert split and float(split.group(1)) > 90, runs[name].logs[0][-2000:]


@pytest.mark.parametrize("name", ["two_then_one", "one_then_two"])
def test_checkpoints_resume_across_process_counts(runs: dict[str, Run], name: str) -> None:
    """Two processes' checkpoint at step 2 resumes in one process, and one process's in two: steps 3 and 4
    continue the uninterrupted run."""
    reference = runs["one_4"].losses()
    resumed = runs[name].losses()
    print(f"{name}: largest relative difference {max(abs(resumed[s] / reference[s] - 1) for s in resumed):.1e}")
    assert sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_allclose([resumed[s] for s in (1, 2, 3, 4)], [reference[s] for s in (1, 2, 3, 4)], rtol=RTOL)
    process_0 = runs[name].logs[0]
    assert "[sfs] step 3/4" in process_0 and "[sfs] step 1/4" not in process_0  # it resumed, not restarted


@pytest.fixture(scope="module")
def global_view_runs(tiny_synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """G on: a tiny bar VAE (2 steps), copied twice, so each run writes its own bar embeddings: by its one
    process, or by process 0 of two while process 1 waits at the barrier and then reads them."""
    root = tmp_path_factory.mktemp("global_view")
    cache = root / "xla_cache"
    vae = root / "vae_one"
    command = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/bar_vae.py:size=tiny",
               f"--config.data.dataset_dir={tiny_synthetic_dataset}", "--config.train.num_steps=2",
               "--config.train.eval_every=2", "--config.train.checkpoint_every=2", f"--workdir={vae}"]
    trained = subprocess.run(command, cwd=REPO_ROOT, env=_env(cache), capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    assert trained.returncode == 0, trained.stderr[-3000:]
    runs = {"one": Run(tiny_synthetic_dataset, root / "one_g", 2, 1, cache, vae=vae),
            "two": Run(tiny_synthetic_dataset, root / "two_g", 2, 2, cache, vae=shutil.copytree(vae, root / "vae_two"))}
    for run in runs.values():
        run.wait()
    return {**runs, "vae_one": vae, "vae_two": root / "vae_two"}


def test_two_processes_share_the_bar_embeddings_process_zero_wrote(global_view_runs: dict[str, Any]) -> None:
    one, two = global_view_runs["one"].losses(), global_view_runs["two"].losses()
    print(f"G on: one process {one}; two processes {two}")
    assert sorted(one) == sorted(two) == [1, 2]
    np.testing.assert_allclose([two[s] for s in (1, 2)], [one[s] for s in (1, 2)], rtol=RTOL)
    written = [sorted((global_view_runs[name] / "bar_embeddings").glob("*.npz")) for name in ("vae_one", "vae_two")]
    assert [len(files) for files in written] == [1, 1]
    with np.load(written[0][0]) as first, np.load(written[1][0]) as second:
        assert first.files == second.files and all(np.array_equal(first[k], second[k]) for k in first.files)
