"""The HTTP API and the browser app's static files (``create_app``).

Place in the data flow: browser <-> here <-> ``worker`` (the model). Every request
is checked completely (``schemas``, ``plan``) before a job exists or a byte
streams, and refused with a 422 whose ``detail`` reads as a sentence; the song the
browser holds is never touched by a refusal. ``/api/generate`` answers with NDJSON,
one event per line, and always ends with ``done``, ``cancelled`` or ``error``. A
client that goes away cancels its job (the stream's ``finally``), so an abandoned
request never keeps the model busy.

API:
  GET    /api/info             model warm?, queue, limits, presets, defaults
  POST   /api/structure        structure text -> segments (the one parser, ``structure.parse_structure``)
  POST   /api/order            default order of "fill empty segments"
  POST   /api/generate         NDJSON events: start, running, context, note, segment_done, done|cancelled|error
  GET    /api/jobs/{id}        a job's state
  DELETE /api/jobs/{id}        cancel a job
  POST   /api/midi/import      MIDI bytes -> notes, tempo, structure from markers
  POST   /api/midi/export      song JSON -> MIDI bytes (tempo, 4/4, one marker per segment, seed flagged)
  POST   /api/audio            song JSON (+ frame range) -> WAV of the sampled piano (``song_audio``); 503 without one
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sfs_jax.evaluation.protocol import PAPER_STRUCTURES  # the paper's test structures: the app's presets
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import MAX_SONG_BARS, StructureError, parse_structure
from sfs_jax.sampling.composer import Composer
from sfs_jax.serving import midi_files
from sfs_jax.serving.plan import build_plan, fill_order
from sfs_jax.serving.schemas import (
    AudioIn,
    GenerateIn,
    InvalidRequest,
    Limits,
    OrderIn,
    SamplingIn,
    SongIn,
    StructureIn,
    validate_song,
)
from sfs_jax.serving.song_audio import AudioUnavailable, SongAudio
from sfs_jax.serving.worker import TERMINAL_EVENTS, Job, ModelWorker, QueueFull, WorkerUnavailable

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)
_POLL_S = 1.0  # how often a quiet stream checks that the worker is still alive


class _ClientGone(Exception):
    """The client closed the connection before its request body arrived (an aborted upload)."""


class BodyLimit:
    """Guards the request body before any parsing: its size, how long it takes, and aborted uploads.

    A body above ``max_bytes`` (declared or streamed) is refused with a 422; one that
    does not arrive within ``timeout_s`` (a client holding the connection open while
    sending nothing) with a 408; a client that disconnects mid-upload is dropped
    quietly (logged at INFO, not as an error traceback). Once the whole body is in,
    disconnects pass through: a generation stream reads them to cancel its job.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def _message(self, size: int | None) -> str:
        if size is None:
            return f"the request body is larger than the limit of {self.max_bytes} bytes"
        return f"the request body has {size} bytes, more than the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._message(int(declared))}, 422)(scope, receive, send)
            return
        received, body_done = 0, False

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(422, self._message(None))
            return message

        try:
            await self.app(scope, limited, send)
        except _ClientGone:
            log.info("%s %s: the client went away before its request body arrived", scope.get("method"),
                     scope.get("path"))


class HostCheck:
    """Refuses requests whose Host header is not this server's (a DNS-rebinding page could drive it otherwise).

    ``allowed`` holds host names without ports; a loopback server allows only loopback names.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app, self.allowed = app, {host.lower().strip("[]") for host in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                response = JSONResponse({"detail": f"Host {host!r} is not this server's (allowed: "
                                                   f"{', '.join(sorted(self.allowed))}); see --allowed_hosts"}, 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The host of a Host header, without port or IPv6 brackets: '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header[1:]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def allowed_hosts_for(bind_host: str, configured: Sequence[str] = ()) -> tuple[str, ...] | None:
    """The Host names a server bound to ``bind_host`` answers: the configured ones, else loopback names for a
    loopback server, else None (any: a server bound to every interface is reached by names it cannot know)."""
    if configured:
        return tuple(configured)
    if host_name(bind_host) in LOOPBACK_HOSTS or bind_host.startswith("127."):
        return (*LOOPBACK_HOSTS, host_name(bind_host))
    return None


def _location(loc: tuple) -> str:
    """('body', 'notes', 3, 1) -> 'notes[3][1]'."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _message(error: dict) -> str:
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "not JSON")
        return f"the request body is not valid JSON ({reason} at character {error.get('loc', (0, 0))[-1]})"
    return f"{_location(tuple(error.get('loc', ())))}: {error.get('msg', 'invalid')}"


def _readable(err: RequestValidationError) -> JSONResponse:
    messages = [_message(e) for e in err.errors()]
    return JSONResponse({"detail": messages[0] if messages else "invalid request", "errors": messages}, 422)


def _line(event: dict) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


async def _event_stream(worker: ModelWorker, job: Job, events: asyncio.Queue,
                        request: Request | None = None) -> AsyncIterator[str]:
    """The job's events as NDJSON lines until its terminal event; leaving early cancels the job.

    A client that goes away is noticed at the next write, or within ``_POLL_S`` while
    nothing is written (a job waiting in the queue, a segment before its first note):
    a closed tab never keeps the model busy.
    """
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=_POLL_S)
            except TimeoutError:
                if not worker.alive and not job.finished:
                    yield _line({"event": "error", "job": job.id, "message": "the model worker stopped"})
                    return
                if request is not None and await request.is_disconnected():
                    return  # the finally cancels the job
                continue
            yield _line(event)
            if event["event"] in TERMINAL_EVENTS:
                return
    finally:
        if not job.finished:
            worker.cancel(job.id, "the client disconnected")


def create_app(composer: Composer | Callable[[], Composer], *, queue_size: int = 4, limits: Limits | None = None,
               warm_structure: str | None = None, static_dir: Path = STATIC_DIR,
               allowed_hosts: Sequence[str] | None = None, body_timeout_s: float = 10.0) -> FastAPI:
    """The app with its own worker; ``composer`` may be a factory, called on the worker thread at start-up.

    The worker starts and compiles when the app starts (lifespan) and stops with it.
    ``allowed_hosts``: Host names it answers (None: any; ``experiments.serve`` passes
    the bound address's, ``allowed_hosts_for``). No page loads anything from a CDN: the
    interactive API docs (which would) are off; ``/openapi.json`` describes the API.
    """
    limits = limits or Limits()
    worker = ModelWorker(composer, queue_size=queue_size, warm_structure=warm_structure)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(title="sfs-jax co-creation", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker
    app.state.limits = limits
    app.state.piano = SongAudio()  # the sampled piano, loaded on its first render
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=body_timeout_s)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)  # added last: runs first

    @app.exception_handler(InvalidRequest)
    async def invalid(_: Request, err: InvalidRequest) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 422)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, err: RequestValidationError) -> JSONResponse:
        return _readable(err)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 429, headers={"Retry-After": "1"})

    @app.exception_handler(WorkerUnavailable)
    @app.exception_handler(AudioUnavailable)
    async def unavailable(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 503)

    @app.get("/api/info")
    def info() -> dict:
        no_piano = app.state.piano.unavailable_reason()
        return {**worker.info(), "limits": dataclasses.asdict(limits), "max_song_bars": MAX_SONG_BARS,
                "frames_per_beat": notes_lib.FRAMES_PER_BEAT, "beats_per_bar": notes_lib.BEATS_PER_BAR,
                "pitch_range": [notes_lib.MIN_PITCH, notes_lib.MAX_PITCH], "presets": list(PAPER_STRUCTURES),
                "sampling_defaults": SamplingIn().model_dump(),
                "piano": {"sampled": no_piano is None, "detail": no_piano}}

    @app.post("/api/structure")
    def structure(body: StructureIn) -> dict:
        try:
            segments = parse_structure(body.text)
        except StructureError as err:
            raise InvalidRequest(str(err)) from err
        return {"segments": [{"label": s.label, "bars": s.n_bars} for s in segments]}

    @app.post("/api/order")
    def order(body: OrderIn) -> dict:
        return {"order": fill_order(body, limits)}

    @app.post("/api/generate")
    async def generate(body: GenerateIn, request: Request) -> StreamingResponse:
        plan = await run_in_threadpool(build_plan, body, limits)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = worker.submit(plan, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        return StreamingResponse(_event_stream(worker, job, events, request), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Job-Id": job.id})

    def _job_json(job: Job) -> dict:
        return {"job": job.id, "state": job.state, "cancel_reason": job.cancel_reason or None}

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str) -> dict:
        job = worker.job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown or long finished)")
        return _job_json(job)

    @app.delete("/api/jobs/{job_id}")
    def cancel_job(job_id: str) -> dict:
        job = worker.cancel(job_id, "cancelled by the user")
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown or long finished)")
        return _job_json(job)

    @app.post("/api/midi/import")
    async def midi_import(request: Request) -> dict:
        data = await request.body()
        imported = await run_in_threadpool(midi_files.import_midi, data, limits)
        return imported.to_json()

    @app.post("/api/midi/export")
    async def midi_export(body: SongIn) -> Response:
        song = await run_in_threadpool(validate_song, body, limits)
        data = await run_in_threadpool(midi_files.export_midi, song)
        return Response(data, media_type="audio/midi",
                        headers={"Content-Disposition": 'attachment; filename="song.mid"'})

    @app.post("/api/audio")
    async def song_audio(body: AudioIn) -> Response:
        song = await run_in_threadpool(validate_song, body, limits)
        chunk = await run_in_threadpool(app.state.piano.render, song, body.frames)
        return Response(chunk.wav, media_type="audio/wav",
                        headers={"Cache-Control": "no-store", "X-Audio-Start-Frame": str(chunk.start_frame),
                                 "Content-Disposition": 'attachment; filename="song.wav"'})

    app.mount("/", StaticFiles(directory=static_dir, html=True), name="app")
    return app
