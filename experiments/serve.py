r"""The co-creation web app: one model worker behind a FastAPI server, the browser app at /.

    python -m experiments.serve --checkpoint=runs/quickstart/sfs          # then open http://127.0.0.1:8000
    python -m experiments.serve --random_model=tiny --port=8001           # an untrained model: UI work, no checkpoint

The model is loaded and compiled at start-up on the worker thread (``/api/info``
says ``warm`` when it is ready; requests sent before wait in the queue). Bound to
127.0.0.1 unless ``--host`` says otherwise: the server has no authentication. A loopback
server answers only requests whose Host header is a loopback name, so a web page on
another site cannot drive it through DNS rebinding (``--allowed_hosts`` adds names).
Without ``--checkpoint`` the model that ships with the project is served;
``--checkpoint=newest`` takes the newest SFS run under ``--runs_dir``.
"""

from __future__ import annotations

import logging

import uvicorn
from absl import app, flags

from experiments import cli
from experiments.composers import composer_factory
from experiments.generate import resolve_checkpoint  # also defines --checkpoint and --runs_dir, read below
from sfs_jax.serving.app import allowed_hosts_for, create_app
from sfs_jax.serving.server import DEFAULT_HOST, uvicorn_config

FLAGS = flags.FLAGS  # --checkpoint and --runs_dir are experiments.generate's: one definition per process
_RANDOM = flags.DEFINE_enum("random_model", "", ["", "tiny", "small"],
                            "Serve an untrained model of this size instead of a checkpoint (UI work, load tests).")
_HOST = flags.DEFINE_string("host", DEFAULT_HOST, "Address to bind; keep loopback unless you mean to share it.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to bind.")
_QUEUE = flags.DEFINE_integer("queue_size", 4, "Requests that may wait behind the running one (more: HTTP 429).")
_ALLOWED_HOSTS = flags.DEFINE_list("allowed_hosts", [], "Host names the server answers (default: loopback names "
                                   "for a loopback --host, any name for another).")
_CHUNK = flags.DEFINE_integer("chunk_tokens", 32, "Tokens per compiled sampler chunk: the cancel and streaming "
                                                  "granularity.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare(quiet=False)  # the server's own INFO log (jobs, warm-up) is what an operator reads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        checkpoint = "" if _RANDOM.value else resolve_checkpoint(FLAGS.checkpoint, FLAGS.runs_dir)
        factory = composer_factory(checkpoint, _RANDOM.value, _CHUNK.value)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    server_app = create_app(factory, queue_size=_QUEUE.value,
                            allowed_hosts=allowed_hosts_for(_HOST.value, _ALLOWED_HOSTS.value))
    print(f"serving on http://{_HOST.value}:{_PORT.value} (the model compiles first; /api/info says when it is warm)")
    uvicorn.Server(uvicorn_config(server_app, _HOST.value, _PORT.value)).run()


if __name__ == "__main__":
    cli.run(main)
