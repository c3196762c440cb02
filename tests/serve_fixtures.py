"""One tiny random-init composer served on loopback for the whole test session.

The protocol tests (``test_serve_api.py``) and the browser tests (``test_app_e2e.py``)
share it because compiling the sampler is most of their cost: the server warms up
once (``experiments.serve.random_composer``, the ``tiny`` preset with 2-bar windows)
and is stopped when the session ends. No checkpoint is needed; sampling speed and the
protocol do not depend on the weights.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI

from data_pipeline import synthetic
from experiments.composers import random_composer
from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.serving.app import allowed_hosts_for, create_app
from sfs_jax.serving.schemas import Limits
from sfs_jax.serving.server import ServerThread
from sfs_jax.serving.worker import ModelWorker

QUEUE_SIZE = 2
LIMITS = Limits(max_notes=500, max_body_bytes=100_000)
WARM_TIMEOUT_S = 600
# Small 16-frame chunks: notes stream early and a cancel lands quickly even on the tiny model.
CHUNK_TOKENS = 16
BODY_TIMEOUT_S = 2.0  # short, so the slow-body test waits little


@dataclasses.dataclass
class Served:
    url: str
    app: FastAPI

    @property
    def worker(self) -> ModelWorker:
        return self.app.state.worker


@functools.cache
def shared_server() -> Served:
    """Starts the server once per process and compiles the model; stopped at interpreter exit."""
    # As experiments.serve runs it on loopback: only loopback Host names are answered.
    app = create_app(random_composer("tiny", CHUNK_TOKENS), queue_size=QUEUE_SIZE, limits=LIMITS,
                     warm_structure="A3", allowed_hosts=allowed_hosts_for("127.0.0.1"),
                     body_timeout_s=BODY_TIMEOUT_S)
    thread = ServerThread(app)
    url = thread.__enter__()
    atexit.register(thread.__exit__, None, None, None)
    if not app.state.worker.wait_warm(WARM_TIMEOUT_S):
        raise RuntimeError(f"the test model did not compile within {WARM_TIMEOUT_S} s: {app.state.worker.info()}")
    return Served(url, app)


def seed_notes(n_bars: int = 2) -> np.ndarray:
    """The first bars of a synthetic song: a realistic seed with notes in every bar."""
    return notes_lib.notes_in_bars(synthetic.generate_song(0, 1).notes_Nx4, 0, n_bars)


def write_seed_midi(path: Path, n_bars: int = 2) -> Path:
    return midi_io.write_midi(path, seed_notes(n_bars), 96.0)


def stream_events(url: str, body: dict, timeout_s: float = 120.0, stop_after=None) -> list[dict]:
    """POSTs /api/generate and returns its events; ``stop_after(event)`` True closes the stream early."""
    events = []
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                continue
            events.append(json.loads(line))
            if stop_after is not None and stop_after(events[-1]):
                break
    return events
