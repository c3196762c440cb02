"""The web API over real HTTP on loopback with a tiny random-init composer (no browser).

Event order and contents, notes inside the targets and the grammar's limits,
reproducible takes, bar-range generation, every validation case with its own
message (and no job created), cancellation by DELETE, by disconnect and by a newer
request of the same client, queueing of two clients and a full queue, a failure
mid-stream, MIDI import/export with markers.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import symusic

from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.sampling.composer import Composer
from tests import serve_fixtures
from tests.serve_fixtures import Served, seed_notes, stream_events

FPB = notes_lib.FRAMES_PER_BAR
# A2 (the seed) B3 A2 C1: B is longer than the tiny model's 2-bar window, so it slides.
SEGMENTS = [{"label": "A", "bars": 2, "seed": True}, {"label": "B", "bars": 3}, {"label": "A", "bars": 2},
            {"label": "C", "bars": 1}]
LONG = [{"label": "A", "bars": 2, "seed": True}, {"label": "B", "bars": 40}]  # about a minute of tiny sampling


@pytest.fixture(scope="module")
def served() -> Served:
    return serve_fixtures.shared_server()


def _body(**overrides) -> dict:
    body = {"segments": SEGMENTS, "tempo_bpm": 96.0, "notes": seed_notes().tolist(), "targets": [1, 3],
            "seed": 7, "client": "tests"}
    body.update(overrides)
    return body


def _notes_of(events: list[dict]) -> list[tuple[int, int, int, int]]:
    return [(e["onset"], e["pitch"], e["velocity"], e["duration"]) for e in events if e["event"] == "note"]


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _job_state(served: Served, job: str) -> dict:
    return httpx.get(f"{served.url}/api/jobs/{job}", timeout=10).json()


def _idle(served: Served) -> bool:
    queue = httpx.get(f"{served.url}/api/info", timeout=10).json()["queue"]
    return not queue["busy"] and queue["waiting"] == 0


class _Background:
    """A generate request streaming in a thread; ``events`` fills as lines arrive."""

    def __init__(self, url: str, body: dict) -> None:
        self.events: list[dict] = []
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, args=(url, body), daemon=True)
        self.thread.start()

    def _run(self, url: str, body: dict) -> None:
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=180) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if line:
                    self.events.append(json.loads(line))

    def first(self, kind: str, timeout_s: float = 60.0) -> dict:
        _wait(lambda: any(e["event"] == kind for e in self.events), timeout_s, f"a {kind} event")
        return next(e for e in self.events if e["event"] == kind)

    def join(self, timeout_s: float = 60.0) -> list[dict]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the stream did not end"
        return self.events


def test_info_says_warm_and_lists_presets(served: Served) -> None:
    info = httpx.get(f"{served.url}/api/info", timeout=10).json()
    assert info["warm"] and info["failure"] is None and info["warmup_seconds"] > 0
    assert info["model"]["window_bars"] == 2
    assert info["presets"] == ["A8B16C8D8E8", "A4B8C8D8B8C16E8", "A8B8C4B8D8B8E4", "A4B8C8A8C8A8D8"]
    page = httpx.get(f"{served.url}/", timeout=10)
    assert page.status_code == 200 and "app.js" in page.text
    assert httpx.get(f"{served.url}/app.js", timeout=10).status_code == 200


def test_events_come_in_order_with_notes_inside_their_targets(served: Served) -> None:
    events = stream_events(served.url, _body())
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["start", "running"] and kinds[-1] == "done"
    assert kinds.count("done") == 1 and "error" not in kinds and "cancelled" not in kinds
    job = events[0]["job"]
    assert all(e.get("job", job) == job for e in events)
    contexts = [e for e in events if e["event"] == "context"]
    assert [c["segment"] for c in contexts] == [1, 3]  # the targets, in the order asked
    bars = {1: (2, 5), 3: (7, 8)}
    for context in contexts:
        index = context["segment"]
        assert tuple(context["bars"]) == bars[index]
        assert set(context["contexts"]) == {"left", "right", "seed", "ref"}
        assert context["contexts"]["seed"]["segment"] == 0  # the seed is the first composed segment
        start = events.index(context)
        done = next(i for i, e in enumerate(events) if e["event"] == "segment_done" and e["segment"] == index)
        notes = [e for e in events[start:done] if e["event"] == "note"]
        assert notes and all(e["segment"] == index and e["sample"] == 0 for e in notes)
        assert events[done]["notes"] == len(notes)
        lo, hi = bars[index]
        for e in notes:
            assert lo * FPB <= e["onset"] < hi * FPB
            assert notes_lib.MIN_PITCH <= e["pitch"] <= notes_lib.MAX_PITCH
            assert 1 <= e["velocity"] <= 127 and 1 <= e["duration"] <= notes_lib.MAX_DURATION_FRAMES
    # segment 3 (C1, written second) sees segment 1 (just written) as its Left context
    assert contexts[1]["contexts"]["left"]["segment"] == 1
    done = events[-1]
    assert done["beats"] == 16 and done["beats_per_second"] > 0 and done["notes"] == len(_notes_of(events))
    assert done["first_note_s"] is not None


def test_same_seed_and_settings_reproduce_a_take(served: Served) -> None:
    first = _notes_of(stream_events(served.url, _body(targets=[2])))
    again = _notes_of(stream_events(served.url, _body(targets=[2])))
    other = _notes_of(stream_events(served.url, _body(targets=[2], seed=8)))
    assert first == again and first != other


def test_bar_range_rewrites_only_its_bars_with_the_rest_as_context(served: Served) -> None:
    kept = seed_notes().copy()
    kept[:, notes_lib.ONSET] += 2 * FPB  # the same two bars again as bars 2-3 (segment B's first two bars)
    notes = np.concatenate([seed_notes(), kept]).tolist()
    events = stream_events(served.url, _body(notes=notes, targets=None, bar_range=[4, 6]))
    assert events[-1]["event"] == "done"
    contexts = [e for e in events if e["event"] == "context"]
    # bars 4..6 cross B (2..5) and the second A (5..7): two pieces, each reported with its segment
    assert [(c["segment"], c["bars"]) for c in contexts] == [(1, [4, 5]), (2, [5, 6])]
    assert contexts[0]["contexts"]["left"] == {"segment": 1, "label": "B", "bars": [2, 4]}
    assert all(4 * FPB <= onset < 6 * FPB for onset, *_ in _notes_of(events))
    assert events[-1]["beats"] == 8


@pytest.mark.parametrize("overrides, message", [
    (dict(segments=[{"label": "A", "bars": 0}]), "zero length"),
    (dict(segments=[{"label": "A", "bars": 150}, {"label": "B", "bars": 60}]), "more than the limit of 200"),
    (dict(segments=[{"label": "AB", "bars": 8}]), "must be one letter"),
    (dict(targets=None, bar_range=[6, 12]), "not inside the song's bars 0..8"),
    (dict(targets=[9]), "outside the structure's segments 0..3"),
    (dict(targets=[0]), "is the seed"),
    (dict(targets=None, bar_range=[1, 3]), "overlap the seed segment"),
    (dict(targets=[1], bar_range=[2, 4]), "either targets"),
    (dict(segments=[{**s, "seed": i in (0, 2)} for i, s in enumerate(SEGMENTS)]), "two seeds"),
    (dict(notes=[[0, 120, 80, 4]]), "pitch 120 is outside the piano range 21..108"),
    (dict(notes=[[0, 60, 0, 4]]), "velocity 0 is outside 1..127"),
    (dict(notes=[[0, 60, 80, 0]]), "duration 0 frames is outside"),
    (dict(notes=[[8 * FPB, 60, 80, 4]]), "outside the song's 8 bars"),
    (dict(notes=[[i % 64, 40 + i % 40, 80, 1] for i in range(501)]), "too many notes: 501"),
    (dict(notes=[[0, 60, 80]]), "notes[0]"),
    (dict(notes=[]), "seed segment 0 (A2): the seed has no notes"),
    (dict(sampling={"temperature": 1.0, "top_p": 0.0, "top_k": 0}), "top_p must be in (0, 1]"),
    (dict(sampling={"temperature": -1.0, "top_p": 0.9, "top_k": 0}), "temperature -1.0 is outside"),
    (dict(seed=-1), "seed -1 is outside"),
    (dict(tempo_bpm=5), "tempo 5.0 BPM is outside"),
    (dict(surprise=1), "surprise: Extra inputs are not permitted"),
    # Strict types: a string, a boolean or a float is not an integer, a string is not a flag.
    (dict(segments=[{**SEGMENTS[0], "bars": "2"}, *SEGMENTS[1:]]), "segments[0].bars"),
    (dict(segments=[{**SEGMENTS[0], "bars": True}, *SEGMENTS[1:]]), "segments[0].bars"),
    (dict(segments=[{**SEGMENTS[0], "seed": "yes"}, *SEGMENTS[1:]]), "segments[0].seed"),
    (dict(seed="7"), "seed"),
    (dict(tempo_bpm="96"), "tempo_bpm"),
    (dict(notes=[[0, 60, 80, 4.5]]), "notes[0][3]"),
])
def test_each_invalid_request_gets_its_own_422_and_no_job(served: Served, overrides: dict, message: str) -> None:
    before = served.worker.jobs_accepted
    response = httpx.post(f"{served.url}/api/generate", json=_body(**overrides), timeout=30)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert served.worker.jobs_accepted == before


def test_oversized_and_malformed_bodies_are_422(served: Served) -> None:
    big = b'{"segments": [], "notes": [' + b"[0, 60, 80, 4]," * 20_000 + b"[0, 60, 80, 4]]}"
    response = httpx.post(f"{served.url}/api/generate", content=big, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "more than the limit of 100000 bytes" in response.json()["detail"]

    def chunks():
        for _ in range(200):
            yield b"[0, 60, 80, 4]," * 100

    streamed = httpx.post(f"{served.url}/api/midi/import", content=chunks(), timeout=30)
    assert streamed.status_code == 422 and "larger than the limit" in streamed.json()["detail"]
    broken = httpx.post(f"{served.url}/api/generate", content=b"{not json", timeout=30,
                        headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"].startswith("the request body is not valid JSON")


def test_cancel_by_delete_stops_the_worker_within_a_chunk(served: Served) -> None:
    job = _Background(served.url, _body(segments=LONG, targets=[1], client="deleter"))
    job_id = job.first("start")["job"]
    job.first("note")
    response = httpx.delete(f"{served.url}/api/jobs/{job_id}", timeout=10)
    assert response.status_code == 200 and response.json()["job"] == job_id
    events = job.join()
    assert events[-1]["event"] == "cancelled" and events[-1]["reason"] == "cancelled by the user"
    assert events[-1]["latency_s"] < 5.0
    assert _job_state(served, job_id)["state"] == "cancelled"
    _wait(lambda: _idle(served), 10, "the worker to be idle")
    assert stream_events(served.url, _body(targets=[3]))[-1]["event"] == "done"  # the worker goes on
    assert httpx.delete(f"{served.url}/api/jobs/nope", timeout=10).status_code == 404


def test_a_client_that_disconnects_cancels_its_job(served: Served) -> None:
    events = stream_events(served.url, _body(segments=LONG, targets=[1], client="leaver"),
                           stop_after=lambda e: e["event"] == "note")
    job_id = events[0]["job"]
    _wait(lambda: _job_state(served, job_id)["state"] == "cancelled", 20, "the abandoned job to be cancelled")
    assert _job_state(served, job_id)["cancel_reason"] == "the client disconnected"
    _wait(lambda: _idle(served), 10, "the worker to be idle")


def test_a_newer_request_from_the_same_client_cancels_the_older(served: Served) -> None:
    older = _Background(served.url, _body(segments=LONG, targets=[1], client="impatient"))
    older.first("note")
    newer = stream_events(served.url, _body(targets=[3], client="impatient"))
    assert newer[-1]["event"] == "done"
    events = older.join()
    assert events[-1]["event"] == "cancelled" and events[-1]["reason"] == "a newer request from the same client"


def test_two_clients_queue_and_a_full_queue_is_refused_with_429(served: Served) -> None:
    blocker = _Background(served.url, _body(segments=LONG, targets=[1], client="blocker"))
    blocker.first("note")
    waiting = [_Background(served.url, _body(targets=[3], client=f"client-{i}")) for i in range(2)]
    for w in waiting:
        assert w.first("start")["queue_position"] >= 1
    _wait(lambda: httpx.get(f"{served.url}/api/info", timeout=10).json()["queue"]["waiting"] == 2, 10, "two waiting")
    refused = httpx.post(f"{served.url}/api/generate", json=_body(targets=[3], client="third"), timeout=30)
    assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
    httpx.delete(f"{served.url}/api/jobs/{blocker.first('start')['job']}", timeout=10)
    assert blocker.join()[-1]["event"] == "cancelled"
    for w in waiting:
        events = w.join()
        assert [e["event"] for e in events][-1] == "done" and events[1]["event"] == "running"


def test_a_failure_mid_stream_ends_with_an_error_event(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Composer.compose

    def failing(self, request, key, num_samples=1, callbacks=None, seed=0, sampling=None):
        on_note = callbacks.on_note

        def explode(sample, segment, note):
            on_note(sample, segment, note)
            raise RuntimeError("injected failure")

        callbacks.on_note = explode
        return original(self, request, key, num_samples, callbacks, seed, sampling)

    monkeypatch.setattr(Composer, "compose", failing)
    events = stream_events(served.url, _body(targets=[1]))
    assert [e["event"] for e in events][-1] == "error"
    assert "injected failure" in events[-1]["message"]
    assert sum(e["event"] == "note" for e in events) == 1
    monkeypatch.undo()
    assert stream_events(served.url, _body(targets=[3]))[-1]["event"] == "done"


def test_midi_export_has_tempo_meter_and_markers_and_imports_back(served: Served) -> None:
    notes = seed_notes().tolist()
    song = {"segments": SEGMENTS, "tempo_bpm": 96.0, "notes": notes}
    response = httpx.post(f"{served.url}/api/midi/export", json=song, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/midi"
    score = symusic.Score.from_midi(response.content)
    assert midi_io.read_markers(score) == [(0, "A2 seed"), (2, "B3"), (5, "A2"), (7, "C1")]
    assert [(t.numerator, t.denominator) for t in score.time_signatures] == [(4, 4)]
    imported = httpx.post(f"{served.url}/api/midi/import", content=response.content, timeout=30).json()
    assert imported["segments"] == [{"label": s["label"], "bars": s["bars"], "seed": s.get("seed", False)}
                                    for s in SEGMENTS]
    assert imported["tempo_bpm"] == pytest.approx(96.0) and imported["warnings"] == []
    np.testing.assert_array_equal(np.asarray(imported["notes"]), notes_lib.normalize_notes(np.asarray(notes))[0])
    garbage = httpx.post(f"{served.url}/api/midi/import", content=b"MThd garbage", timeout=30)
    assert garbage.status_code == 422 and "not a usable MIDI file" in garbage.json()["detail"]
    bad = httpx.post(f"{served.url}/api/midi/export", json={**song, "notes": [[0, 60, 200, 4]]}, timeout=30)
    assert bad.status_code == 422 and "velocity 200" in bad.json()["detail"]


def test_structure_and_fill_order_endpoints(served: Served) -> None:
    parsed = httpx.post(f"{served.url}/api/structure", json={"text": "A8 B8 A8 C4"}, timeout=10).json()
    assert parsed["segments"] == [{"label": "A", "bars": 8}, {"label": "B", "bars": 8},
                                  {"label": "A", "bars": 8}, {"label": "C", "bars": 4}]
    bad = httpx.post(f"{served.url}/api/structure", json={"text": "A8 B"}, timeout=10)
    assert bad.status_code == 422 and "cannot parse" in bad.json()["detail"]
    song = {"segments": SEGMENTS, "notes": seed_notes().tolist(), "seed": 3}
    order = httpx.post(f"{served.url}/api/order", json=song, timeout=10).json()["order"]
    assert sorted(order) == [1, 2, 3]  # every empty segment, never the seed


def test_strict_numbers_in_the_other_endpoints(served: Served) -> None:
    """/api/order and /api/midi/export refuse what is not a JSON integer or boolean as /api/generate does."""
    song = {"segments": SEGMENTS, "notes": seed_notes().tolist()}
    for endpoint, body, field in (("order", {**song, "seed": "yes"}, "seed"),
                                  ("order", {**song, "segments": [{**SEGMENTS[0], "bars": "8"}]}, "bars"),
                                  ("midi/export", {**song, "segments": [{**SEGMENTS[0], "bars": True}]}, "bars")):
        response = httpx.post(f"{served.url}/api/{endpoint}", json=body, timeout=10)
        assert response.status_code == 422 and field in response.json()["detail"], (endpoint, response.text)


@pytest.mark.parametrize("text", ["A\u0668", "B\uff11\uff12", "A8 B\u0663"])
def test_structures_take_ascii_digits_only(served: Served, text: str) -> None:
    response = httpx.post(f"{served.url}/api/structure", json={"text": text}, timeout=10)
    assert response.status_code == 422 and "cannot parse" in response.json()["detail"]


def _midi_bytes(tempo_bpm: float = 100.0, marker: str = "A2") -> bytes:
    score = midi_io.notes_to_score(seed_notes(), 100.0)
    score.tempos.clear()
    score.tempos.append(symusic.Tempo(0, tempo_bpm))
    score.markers.append(symusic.TextMeta(0, marker))
    return bytes(score.dumps_midi())


def test_midi_import_refuses_impossible_tempos_and_odd_markers(served: Served) -> None:
    """Tempos outside 20..400 BPM are refused with the reason; a marker with thousands of digits is no marker."""
    for bpm in (3.576, 60_000_000.0):
        response = httpx.post(f"{served.url}/api/midi/import", content=_midi_bytes(bpm), timeout=10)
        assert response.status_code == 422 and "outside 20..400" in response.json()["detail"], response.text
    huge = httpx.post(f"{served.url}/api/midi/import", content=_midi_bytes(marker="A" + "9" * 5000), timeout=10)
    assert huge.status_code == 200 and huge.json()["segments"] is None
    assert "is not a segment marker" in huge.json()["warnings"][0]
    digits = httpx.post(f"{served.url}/api/midi/import", content=_midi_bytes(marker="A\u0662"), timeout=10)
    assert digits.status_code == 200 and digits.json()["segments"] is None


def test_job_ids_stay_with_their_client(served: Served) -> None:
    """/api/info says whether a job runs, not which: nobody else learns an id to cancel."""
    job = _Background(served.url, _body(segments=LONG, targets=[1], client="owner"))
    job_id = job.first("note")["job"] if "job" in job.first("note") else job.first("start")["job"]
    info = httpx.get(f"{served.url}/api/info", timeout=10).json()
    assert info["queue"]["busy"] is True and job_id not in json.dumps(info)
    httpx.delete(f"{served.url}/api/jobs/{job_id}", timeout=10)
    job.join()


def test_foreign_host_headers_are_refused(served: Served) -> None:
    """A DNS-rebinding page reaches a loopback server with its own name in Host: refused before any work."""
    for host in ("evil.example", "evil.example:8000", "192.168.1.20"):
        response = httpx.get(f"{served.url}/api/info", headers={"Host": host}, timeout=10)
        assert response.status_code == 400 and "is not this server's" in response.json()["detail"], host
    port = served.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{served.url}/api/info", headers={"Host": host}, timeout=10).status_code == 200


def test_no_page_loads_from_a_cdn(served: Served) -> None:
    for path in ("/docs", "/redoc"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code == 404
    assert httpx.get(f"{served.url}/openapi.json", timeout=10).status_code == 200


def test_a_body_that_never_arrives_times_out_and_an_aborted_upload_is_quiet(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """A client that declares a body and sends half of it gets 408 after the timeout; one that hangs up
    mid-upload costs an INFO line, not an error traceback."""
    import socket

    host, port = served.url.removeprefix("http://").split(":")
    request = (f"POST /api/midi/import HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode() + b"MThd"
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(request)
        started = time.perf_counter()
        answer = slow.recv(4096).decode("latin-1")
        assert " 408 " in answer.splitlines()[0] and "did not arrive within" in answer
        assert time.perf_counter() - started < serve_fixtures.BODY_TIMEOUT_S + 5
    caplog.set_level("INFO")
    with socket.create_connection((host, int(port)), timeout=30) as aborted:
        aborted.sendall(request)
    time.sleep(1.0)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    assert httpx.get(f"{served.url}/api/info", timeout=10).status_code == 200  # the server is still up


def _odd_values(rng: np.random.Generator) -> list:
    """Values a careless or hostile client sends in any field."""
    return [None, True, -1, 0, 10**30, -(10**30), 1e308, 2.5, "", "8", "A" + "9" * 5000, "\u0668", [], {},
            [[[]]], {"a": {"b": {"c": []}}}, [1, "x", None], list(range(50)), "x" * 10_000,
            int(rng.integers(-(2**62), 2**62)), float(rng.normal() * 1e6)]


def test_no_input_makes_the_server_fail(served: Served) -> None:
    """Every field of every endpoint replaced by odd values (and raw bodies that are not JSON at all):
    always a 4xx answer with a reason, never a 5xx, and the server keeps answering."""
    rng = np.random.default_rng(0)
    song = {"segments": SEGMENTS, "tempo_bpm": 96.0, "notes": seed_notes().tolist()}
    # generate writes one 1-bar segment when an odd value happens to be valid (a client name, a seed)
    bodies = {"generate": _body(targets=[3]), "order": {**song, "seed": 1}, "midi/export": song,
              "structure": {"text": "A8"}}
    statuses = []
    for endpoint, body in bodies.items():
        for field in [*body, "sampling"] if endpoint == "generate" else list(body):
            for value in _odd_values(rng):
                odd = {**body, field: value}
                response = httpx.post(f"{served.url}/api/{endpoint}", json=odd, timeout=30)
                if response.status_code == 200 and endpoint == "generate":
                    continue  # a request that happens to be valid streams normally
                statuses.append(response.status_code)
                assert response.status_code < 500, (endpoint, field, repr(value)[:80], response.text[:300])
                if response.status_code >= 400:
                    assert response.json()["detail"], (endpoint, field)
        for raw in (b"", b"NaN", b"[1, 2", b"\xff\xfe\x00", b'{"segments": ' * 200, b"null", b"1e999"):
            response = httpx.post(f"{served.url}/api/{endpoint}", content=raw, timeout=30,
                                  headers={"Content-Type": "application/json"})
            statuses.append(response.status_code)
            assert 400 <= response.status_code < 500, (endpoint, raw[:20], response.text[:200])
    for raw in (b"", b"MThd", b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff\xff\xff", bytes(range(256))):
        response = httpx.post(f"{served.url}/api/midi/import", content=raw, timeout=30)
        assert 400 <= response.status_code < 500, (raw[:20], response.text[:200])
    for path in ("/api/jobs/" + "x" * 5000, "/api/jobs/%00", "/api/nothing"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code < 500
        assert httpx.delete(f"{served.url}{path}", timeout=10).status_code < 500
    assert len(statuses) > 200 and httpx.get(f"{served.url}/api/info", timeout=10).json()["warm"]
    _wait(lambda: _idle(served), what="the queue to drain")


def test_a_client_that_leaves_while_nothing_streams_is_noticed(served: Served) -> None:
    """A tab closed while its job waits in the queue (no event to write) is noticed by polling, not at the
    next write: the job is cancelled within seconds, before it would have run."""
    blocker = _Background(served.url, _body(segments=LONG, targets=[1], client="blocker2"))
    blocker.first("note")
    events = stream_events(served.url, _body(targets=[3], client="closed-tab"),
                           stop_after=lambda e: e["event"] == "start")
    job_id = events[0]["job"]
    assert events[0]["queue_position"] >= 1
    started = time.perf_counter()
    _wait(lambda: _job_state(served, job_id)["state"] == "cancelled", 10, "the waiting job of a closed tab")
    assert time.perf_counter() - started < 5
    assert _job_state(served, job_id)["cancel_reason"] == "the client disconnected"
    httpx.delete(f"{served.url}/api/jobs/{blocker.first('start')['job']}", timeout=10)
    blocker.join()
    _wait(lambda: _idle(served), 10, "the worker to be idle")
