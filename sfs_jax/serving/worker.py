"""The one thread that owns the model: a bounded queue of jobs, streamed events and cancellation.

Place in the data flow: ``app`` (HTTP) -> ``GenerationPlan`` -> here -> the
composer [6] -> events back to the app. Why one thread: the model and the device
are one resource; jobs run one after another, so a job's speed does not depend on
how many clients are waiting and jitted functions are never entered concurrently.
Waiting jobs sit in a bounded queue (a full queue refuses at once, the app answers
429) and can be cancelled where they wait; a running job is cancelled through
``Callbacks.should_cancel``, which the composer reads between compiled sampler
chunks, so a cancel takes effect within one chunk. Every job ends with exactly one
terminal event (``done``, ``cancelled`` or ``error``): nothing is lost silently.

The loaded composer is compiled at start-up (``warm``) by composing one structure
with a segment longer than the window, which compiles the window start with and
without a teacher-forced prefix, the sampler chunk and the bar VAE. Sampling
settings (temperature, top_p, top_k) are run-time values of that compiled sampler,
so a job with new settings starts at once and memory does not grow with them (the
``running`` event's ``compiling`` is always false, kept for clients that read it).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable

import jax

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import parse_structure
from sfs_jax.sampling.composer import Callbacks, Composer, ComposeRequest, CompositionCancelled, context_summary
from sfs_jax.serving.plan import GenerationPlan

TERMINAL_EVENTS = ("done", "cancelled", "error")
log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``queue_size`` waiting jobs; the app answers 429 with this message."""


class WorkerUnavailable(Exception):
    """The model failed to load or the server is stopping; the app answers 503 with this message."""


class _TargetsDone(Exception):
    """Raised from ``on_segment_start`` when the composer reaches a piece that is not a target."""


@dataclasses.dataclass(eq=False)
class Job:
    """One generate request from its acceptance to its terminal event."""

    id: str
    plan: GenerationPlan
    emit: Callable[[dict], None]
    submitted_s: float = dataclasses.field(default_factory=time.perf_counter)
    state: str = "queued"  # queued, running, done, cancelled, error
    cancel_reason: str = ""
    cancel_requested_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_EVENTS

    def send(self, event: dict) -> None:
        """Emits one event; a terminal event sets the state and nothing follows it."""
        if self.finished:
            return
        if event["event"] in TERMINAL_EVENTS:
            self.state = event["event"]
        try:
            self.emit(event)
        except Exception:  # the stream's loop may be gone (client left); the job still ends cleanly
            log.debug("job %s: event %s not delivered", self.id, event["event"], exc_info=True)

    def request_cancel(self, reason: str) -> None:
        if self.cancel_requested_s is None:
            self.cancel_reason, self.cancel_requested_s = reason, time.perf_counter()

    def cancelled_event(self) -> dict:
        latency = None if self.cancel_requested_s is None else time.perf_counter() - self.cancel_requested_s
        return {"event": "cancelled", "job": self.id, "reason": self.cancel_reason,
                "latency_s": None if latency is None else round(latency, 4)}


class ModelWorker:
    """Owns a Composer (given, or built by a factory on the worker thread) and runs jobs one at a time."""

    def __init__(self, composer: Composer | Callable[[], Composer], queue_size: int = 4,
                 warm_structure: str | None = None, history: int = 256) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._source = composer
        self.queue_size, self.history = queue_size, history
        self._warm_structure = warm_structure
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: Job | None = None
        self._base: Composer | None = None
        self._stopping = False
        self._failure: str | None = None
        self.warm = False
        self.warmup_seconds: float | None = None
        self.jobs_accepted = 0
        self._thread = threading.Thread(target=self._run, name="sfs-model-worker", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancels every job (waiting ones at once, the running one within a chunk) and joins the thread."""
        with self._lock:
            self._stopping = True
            while self._queue:
                job = self._queue.popleft()
                job.request_cancel("the server is shutting down")
                job.send(job.cancelled_event())
            if self._running is not None:
                self._running.request_cancel("the server is shutting down")
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_warm(self, timeout_s: float) -> bool:
        """Blocks until warm (True), failed or timed out (False); for tests, benchmarks and start-up logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.warm or self._failure:
                return self.warm
            time.sleep(0.05)
        return self.warm

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, plan: GenerationPlan, emit: Callable[[dict], None]) -> Job:
        """Queues a job (its ``start`` event is sent here) after cancelling the same client's older jobs."""
        with self._lock:
            if self._failure:
                raise WorkerUnavailable(f"the model failed to load: {self._failure}")
            if self._stopping or not self.alive:
                raise WorkerUnavailable("the model worker is not running")
            if plan.client:
                mine = [j for j in (*self._queue, self._running) if j is not None and j.plan.client == plan.client]
                for older in mine:
                    self._cancel_locked(older, "a newer request from the same client")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"the queue is full ({len(self._queue)} requests waiting behind the running one); "
                                "try again when a generation finishes")
            job = Job(uuid.uuid4().hex[:12], plan, emit)
            self._jobs[job.id] = job
            self.jobs_accepted += 1
            self._trim_history()
            ahead = len(self._queue) + (self._running is not None)
            self._queue.append(job)
            job.send({"event": "start", "job": job.id, "queue_position": ahead,
                      "targets": [plan.describe(i) for i in plan.targets], "seed": plan.seed,
                      "sampling": {"temperature": plan.sampling.temperature, "top_p": plan.sampling.top_p,
                                   "top_k": plan.sampling.top_k}, "warm": self.warm})
            self._lock.notify_all()
            return job

    def cancel(self, job_id: str, reason: str) -> Job | None:
        """Cancels a waiting job at once or asks the running one to stop; None for an unknown id."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._cancel_locked(job, reason)
            return job

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _cancel_locked(self, job: Job, reason: str) -> None:
        if job.state == "queued":
            self._queue.remove(job)
            job.request_cancel(reason)
            job.send(job.cancelled_event())
        elif job.state == "running":
            job.request_cancel(reason)

    def _trim_history(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(self._jobs) - self.history)]:
            del self._jobs[job_id]

    def info(self) -> dict:
        with self._lock:
            base = self._base
            model = None if base is None else {
                "window_bars": base.example_config.window_bars, "context_bars": base.example_config.context_bars,
                "max_tokens": base.sampling.max_tokens, "chunk_tokens": base.chunk_tokens,
                "uses_global_view": base.vae is not None}
            return {"warm": self.warm, "loading": not self.warm and self._failure is None, "failure": self._failure,
                    "warmup_seconds": self.warmup_seconds, "model": model, "jobs_accepted": self.jobs_accepted,
                    # Whether a job runs, not its id: ids stay with the client that made the job.
                    "queue": {"capacity": self.queue_size, "waiting": len(self._queue),
                              "busy": self._running is not None}}

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load_and_warm()
        except Exception as err:
            log.exception("the model failed to load or compile")
            with self._lock:
                self._failure = f"{type(err).__name__}: {err}"
                while self._queue:
                    self._queue.popleft().send({"event": "error", "message": f"the model failed to load: {err}"})
            return
        while (job := self._next_job()) is not None:
            try:
                self._run_job(job)
            except Exception as err:  # a bug in event plumbing must not kill the worker
                log.exception("job %s failed outside the composer", job.id)
                job.send({"event": "error", "job": job.id, "message": f"internal error: {err}"})
            finally:
                with self._lock:
                    self._running = None

    def _load_and_warm(self) -> None:
        composer = self._source if isinstance(self._source, Composer) else self._source()
        with self._lock:
            self._base = composer
        structure = self._warm_structure or f"A{composer.example_config.window_bars + 1}"
        start = time.perf_counter()
        composer.compose(ComposeRequest(parse_structure(structure)), jax.random.key(0))
        self.warmup_seconds = round(time.perf_counter() - start, 2)
        self.warm = True
        log.info("model warm after %.1f s (structure %s)", self.warmup_seconds, structure)

    def _next_job(self) -> Job | None:
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            job = self._queue.popleft()
            job.state, self._running = "running", job
            return job

    def _run_job(self, job: Job) -> None:
        plan = job.plan
        composer = self._base  # one compiled sampler: the job's settings are run-time values
        started = time.perf_counter()
        job.send({"event": "running", "job": job.id, "compiling": False,
                  "waited_s": round(started - job.submitted_s, 4)})
        stats = {"notes": 0, "first_note_s": None, "piece_notes": collections.Counter()}
        targets = set(plan.targets)

        def on_segment_start(piece: int, chosen: dict[str, int | None]) -> None:
            if piece not in targets:
                raise _TargetsDone()
            contexts = {}
            for slot, summary in context_summary(plan.segments, chosen, composer.example_config, piece).items():
                contexts[slot] = None if summary is None else {
                    "segment": plan.user_segment[summary["segment"]], "label": summary["label"],
                    "bars": list(summary["bars"])}
            job.send({"event": "context", **plan.describe(piece), "contexts": contexts})

        def on_note(sample: int, piece: int, note) -> None:
            if stats["first_note_s"] is None:
                stats["first_note_s"] = time.perf_counter() - job.submitted_s
            stats["notes"] += 1
            stats["piece_notes"][piece] += 1
            # the song's canonical form (velocity 1..127, length >= 1), so the app can send the note back as it is
            onset, pitch, velocity, duration = (int(v) for v in notes_lib.normalize_notes(note[None])[0][0])
            job.send({"event": "note", "sample": int(sample), "segment": plan.user_segment[piece], "onset": onset,
                      "pitch": pitch, "velocity": velocity, "duration": duration})

        def on_segment_done(piece: int) -> None:
            job.send({"event": "segment_done", **plan.describe(piece), "notes": stats["piece_notes"][piece]})

        callbacks = Callbacks(on_segment_start=on_segment_start, on_note=on_note, on_segment_done=on_segment_done,
                              should_cancel=lambda: job.cancel_requested_s is not None)
        try:
            composer.compose(plan.request, jax.random.key(plan.seed), 1, callbacks, seed=plan.seed,
                             sampling=plan.sampling)
        except _TargetsDone:
            pass
        except CompositionCancelled:
            job.send(job.cancelled_event())
            return
        except Exception as err:
            log.exception("job %s failed", job.id)
            job.send({"event": "error", "job": job.id, "message": f"generation failed: {type(err).__name__}: {err}"})
            return
        seconds = time.perf_counter() - started
        first = stats["first_note_s"]
        job.send({"event": "done", "job": job.id, "seconds": round(seconds, 4), "beats": plan.beats,
                  "beats_per_second": round(plan.beats / max(seconds, 1e-9), 3), "notes": stats["notes"],
                  "first_note_s": None if first is None else round(first, 4)})
