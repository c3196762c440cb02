"""The browser app end to end: headless Chromium (Debian's ``chromium``) driven by Playwright.

Set a structure, import a seed, generate a segment and watch notes arrive, see a
refused request leave the song alone, cancel a generation, undo and redo, export a
MIDI whose markers match the structure and import it back; then edit notes on the
piano roll, play (with the server's sampled piano, and with the browser's synth when
the server cannot render), export WAV, and save and reopen a project. Playwright is given the system
browser through ``executable_path``; ``playwright install`` (which downloads a
browser) is never needed. Set SFS_APP_SCREENSHOT=path to keep a screenshot of the
app after a generation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sfs_jax.music import midi_io
from tests import serve_fixtures
from tests.conftest import require_soundfont
from tests.serve_fixtures import Served, write_seed_midi

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: "
                                "apt-get install chromium (.ci/run does this)")


@pytest.fixture(scope="module")
def served() -> Served:
    return serve_fixtures.shared_server()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served: Served):
    context = browser.new_context(viewport={"width": 1400, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(served.url)
    page.wait_for_selector("body[data-warm='true']")
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def _notes(page) -> int:
    return int(page.get_attribute("body", "data-notes"))


def _set_structure(page, text: str) -> None:
    page.fill("#structure-text", text)
    page.press("#structure-text", "Enter")
    page.wait_for_selector(f"body[data-structure='{text}']")


def _select_segment(page, index: int) -> None:
    page.click(f".seg[data-index='{index}'] .seg-name")


def _fill_chips(page) -> int:
    """Chips in the fill order once the server's order has arrived (it lags an edit by a request)."""
    page.wait_for_selector("#fill-order:not([data-pending])", state="attached")
    return page.locator("#fill-order .chip").count()


def _wait_state(page, *states: str) -> str:
    selector = ", ".join(f"#status[data-state='{s}']" for s in states)
    page.wait_for_selector(selector)
    return page.get_attribute("#status", "data-state")


def test_structure_seed_generate_cancel_undo_export_import(page, tmp_path: Path) -> None:
    _set_structure(page, "A2 B2 C40")
    assert page.locator(".seg").count() == 3

    # a seed MIDI into segment 0
    seed = write_seed_midi(tmp_path / "seed.mid")
    seed_count = len(midi_io.read_midi(seed).notes_Nx4)
    _select_segment(page, 0)
    page.set_input_files("#seed-file", str(seed))
    page.wait_for_function(f"document.body.dataset.notes === '{seed_count}'")
    assert page.locator(".seg[data-index='0'] .badge").inner_text() == "seed"

    # a refused request (segment 1 marked as an empty seed) says why and leaves the song alone
    _select_segment(page, 1)
    page.click("#seg-seed")
    _select_segment(page, 2)
    page.click("#gen-segment")
    assert _wait_state(page, "error") == "error"
    assert "has no notes" in page.inner_text("#toast")
    assert _notes(page) == seed_count
    page.click("#undo")  # the seed mark goes back to segment 0
    page.wait_for_selector(".seg[data-index='0'] .badge")

    # generate segment 1 and see its notes stream in
    _select_segment(page, 1)
    page.click("#gen-segment")
    page.wait_for_function("Number(document.body.dataset.streamed) > 0")
    assert _wait_state(page, "done", "error") == "done"
    generated = _notes(page)
    assert generated > seed_count
    assert page.inner_text("#take-label") == "Take 1 of 1"
    assert "Left" in page.inner_text("#contexts")
    if os.environ.get("SFS_APP_SCREENSHOT"):
        page.screenshot(path=os.environ["SFS_APP_SCREENSHOT"])

    # cancel a long generation with Esc: the song is as it was
    _select_segment(page, 2)
    page.click("#gen-segment")
    page.wait_for_function("Number(document.body.dataset.streamed) > 0")
    page.keyboard.press("Escape")
    assert _wait_state(page, "cancelled", "done", "error") == "cancelled"
    assert _notes(page) == generated

    # undo the generation, redo it
    page.click("#undo")
    page.wait_for_function(f"document.body.dataset.notes === '{seed_count}'")
    page.keyboard.press("Control+Shift+Z")
    page.wait_for_function(f"document.body.dataset.notes === '{generated}'")

    # export: markers match the structure, the seed flagged
    with page.expect_download() as download:
        page.click("#export-midi")
    exported = tmp_path / "export.mid"
    download.value.save_as(exported)
    markers = midi_io.read_markers(midi_io.load_score(exported))
    assert markers == [(0, "A2 seed"), (2, "B2"), (4, "C40")]

    # re-import after changing the structure: markers restore it
    _set_structure(page, "A4")
    page.set_input_files("#midi-file", str(exported))
    page.wait_for_selector("body[data-structure='A2 B2 C40']")
    assert _notes(page) == generated
    assert page.locator(".seg[data-index='0'] .badge").count() == 1


def test_piano_roll_editing_playback_and_project_files(page, tmp_path: Path) -> None:
    _set_structure(page, "A4 B4")
    roll = page.locator("#roll").bounding_box()
    geometry = page.evaluate("({px: sfsApp.roll.pxPerFrame, row: sfsApp.roll.rowH, "
                             "top: sfsApp.roll.scroller.scrollTop})")

    def point(frame: float, pitch: int) -> tuple[float, float]:
        x = roll["x"] + 52 + frame * geometry["px"]
        y = roll["y"] + 30 + (108 - pitch) * geometry["row"] - geometry["top"] + geometry["row"] / 2
        return x, y

    # add a note with a click (default length one beat), then move it and resize it by dragging
    page.mouse.click(*point(8.5, 64))
    assert page.evaluate("sfsApp.doc.notes.map(n => [n.onset, n.pitch, n.duration])") == [[8, 64, 8]]
    page.mouse.move(*point(10, 64))
    page.mouse.down()
    page.mouse.move(*point(26, 66), steps=5)
    page.mouse.up()
    assert page.evaluate("sfsApp.doc.notes.map(n => [n.onset, n.pitch])") == [[24, 66]]
    page.mouse.move(*point(31.5, 66))
    page.mouse.down()
    page.mouse.move(*point(39.5, 66), steps=5)
    page.mouse.up()
    assert page.evaluate("sfsApp.doc.notes[0].duration") == 16

    # copy and paste at the cursor (a click on the ruler at bar 1), then delete the selection
    page.keyboard.press("Control+c")
    page.mouse.click(roll["x"] + 52 + 32 * geometry["px"], roll["y"] + 10)
    page.keyboard.press("Control+v")
    assert sorted(page.evaluate("sfsApp.doc.notes.map(n => n.onset)")) == [24, 32]
    page.keyboard.press("Delete")
    assert _notes(page) == 1
    page.keyboard.press("Control+z")
    assert _notes(page) == 2

    # playback from the cursor moves the playhead
    page.click("#play")
    page.wait_for_function("sfsApp.ui.playhead !== null && sfsApp.ui.playhead > 32")
    page.click("#play")
    assert page.evaluate("sfsApp.ui.playhead") is None

    # structure edits: split, relabel, resize by dragging, delete
    _select_segment(page, 1)
    page.click("#seg-split")
    page.wait_for_selector("body[data-structure='A4 B2 B2']")
    _select_segment(page, 2)
    page.fill("#seg-label", "C")
    page.press("#seg-label", "Enter")
    page.wait_for_selector("body[data-structure='A4 B2 C2']")
    handle = page.locator(".seg[data-index='0'] .handle").bounding_box()
    page.mouse.move(handle["x"] + 3, handle["y"] + 5)
    page.mouse.down()
    page.mouse.move(handle["x"] + 3 + 2 * 32 * geometry["px"], handle["y"] + 5, steps=5)
    page.mouse.up()
    page.wait_for_selector("body[data-structure='A6 B2 C2']")
    _select_segment(page, 2)
    page.click("#seg-delete")
    page.wait_for_selector("body[data-structure='A6 B2']")

    # save the project and open it again after clearing
    with page.expect_download() as download:
        page.click("#save-project")
    saved = tmp_path / "project.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text())["notes"] and json.loads(saved.read_text())["format"] == "sfs-jax-project"
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    _set_structure(page, "D1")
    assert _notes(page) == 0
    page.set_input_files("#project-file", str(saved))
    page.wait_for_selector("body[data-structure='A6 B2']")
    page.wait_for_function("document.body.dataset.notes === '2'")


def test_takes_bar_ranges_and_fill_order(page, tmp_path: Path) -> None:
    _set_structure(page, "A2 B2 C2")
    _select_segment(page, 0)
    page.set_input_files("#seed-file", str(write_seed_midi(tmp_path / "seed.mid")))
    page.wait_for_selector(".seg[data-index='0'] .badge")
    assert _fill_chips(page) == 2  # the empty segments, never the seed

    # two takes of segment 1: flip back to the first, accept it, undo the accept
    rows = "JSON.stringify(sfsApp.doc.notes.filter(n => n.onset >= 64 && n.onset < 128)" \
           ".map(n => [n.onset, n.pitch, n.velocity, n.duration]).sort())"
    _select_segment(page, 1)
    page.click("#gen-segment")
    _wait_state(page, "done")
    first = page.evaluate(rows)
    page.click("#gen-segment")
    page.wait_for_selector("#take-label:text('Take 2 of 2')")
    assert page.evaluate(rows) != first
    page.click(".take-head button:first-child")
    page.wait_for_selector("#take-label:text('Take 1 of 2')")
    assert page.evaluate(rows) == first
    page.click(".take-actions button:text('Accept')")
    page.wait_for_selector("#take-label:text('Take 1 of 1')")
    page.click("#undo")
    page.wait_for_selector("#take-label:text('Take 1 of 2')")

    # a bar range: drag on the ruler over bar 4, generate only there
    roll = page.locator("#roll").bounding_box()
    px = page.evaluate("sfsApp.roll.pxPerFrame")
    page.mouse.move(roll["x"] + 52 + 4.2 * 32 * px, roll["y"] + 10)
    page.mouse.down()
    page.mouse.move(roll["x"] + 52 + 4.8 * 32 * px, roll["y"] + 10, steps=4)
    page.mouse.up()
    assert page.inner_text("#gen-range") == "Generate bars 4–5"
    outside = "JSON.stringify(sfsApp.doc.notes.filter(n => n.onset < 128 || n.onset >= 160).map(n => n.onset))"
    before = page.evaluate(outside)
    page.click("#gen-range")
    _wait_state(page, "done")
    assert page.evaluate(outside) == before
    assert page.evaluate("sfsApp.doc.notes.filter(n => n.onset >= 128 && n.onset < 160).length") > 0
    assert _fill_chips(page) == 0  # C has notes now: nothing left to fill


def test_fields_files_and_panels_stay_truthful(page, tmp_path: Path) -> None:
    """An empty temperature is the default (not greedy 0); project files are checked as the server checks
    songs; the structure field follows the song while focused but untouched; the fill button and the header
    say what is there."""
    page.fill("#temperature", "")
    assert page.evaluate("sfsApp.sampling().temperature") == 1 and page.input_value("#temperature") == "1"

    _set_structure(page, "A1 B1")
    page.click("#structure-text")
    page.evaluate("document.getElementById('seg-split').disabled = false; sfsApp.ui.selectedSegment = 0; "
                  "document.getElementById('seg-add').click()")
    page.wait_for_function("document.getElementById('structure-text').value !== 'A1 B1'")
    assert page.input_value("#structure-text") == page.get_attribute("body", "data-structure")
    page.keyboard.press("Escape")

    _set_structure(page, "A1")
    assert _fill_chips(page) == 1 and page.text_content("#gen-fill") == "Fill 1 empty segment"
    page.evaluate("sfsApp.commit('add', () => sfsApp.addNote({onset: 0, pitch: 60, velocity: 80, duration: 8}))")
    page.wait_for_function("document.getElementById('fill-order').textContent === 'No empty segments.'")
    assert page.text_content("#gen-fill") == "Fill empty segments"
    assert page.text_content("#note-count").startswith("1 notes")

    good = {"format": "sfs-jax-project", "version": 1, "segments": [{"label": "A", "bars": 2, "seed": False}],
            "tempo_bpm": 100, "notes": [[0, 60, 80, 8]]}
    bad_projects = {
        "half_bar": {**good, "segments": [{"label": "A", "bars": 2.5}]},
        "huge": {**good, "segments": [{"label": "A", "bars": 1_000_000}]},
        "too_many": {**good, "segments": [{"label": "A", "bars": 1}] * 300},
        "text_note": {**good, "notes": [[0, "60", 80, 8]]},
        "tempo": {**good, "tempo_bpm": 1000},
    }
    for name, project in bad_projects.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(project))
        page.set_input_files("#project-file", str(path))
        page.wait_for_function("document.getElementById('toast').textContent.startsWith('Open failed')")
        assert page.get_attribute("body", "data-structure") == "A1", name
        page.evaluate("document.getElementById('toast').textContent = ''")
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    page.set_input_files("#project-file", str(path))
    page.wait_for_selector("body[data-structure='A2']")


def test_playback_with_the_sampled_piano_export_wav_and_fallback(page, tmp_path: Path) -> None:
    """Play fetches the song from /api/audio a few bars at a time and schedules it; a server that cannot
    render makes the app say so and play on with the browser's synth piano."""
    require_soundfont()
    _set_structure(page, "A8 B8")  # 16 bars: four 4-bar chunks
    page.evaluate("sfsApp.commit('add', () => { for (let b = 0; b < 16; b++) "
                  "sfsApp.addNote({onset: 32 * b, pitch: 60 + b, velocity: 90, duration: 16}); })")
    assert page.input_value("#piano-choice") == "sampled"
    with page.expect_response("**/api/audio") as first:
        page.click("#play")
    assert first.value.status == 200 and first.value.headers["content-type"] == "audio/wav"
    assert json.loads(first.value.request.post_data)["frames"] == [0, 128]
    page.wait_for_selector("body[data-playing='sampled']")
    page.wait_for_function("sfsApp.sampledPlayer.chunksPlayed >= 1 && sfsApp.ui.playhead > 4")
    page.click("#play")
    assert page.evaluate("sfsApp.ui.playhead") is None and page.evaluate("sfsApp.sampledPlayer.sources.size") == 0

    with page.expect_download() as download:
        page.click("#export-wav")
    wav = Path(download.value.path()).read_bytes()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 44_100 * 2 * 30  # 16 bars at 100 BPM: 38 s

    page.route("**/api/audio", lambda route: route.fulfill(
        status=503, content_type="application/json", body=json.dumps({"detail": "the server has no sampled piano"})))
    page.click("#play")
    page.wait_for_selector("body[data-playing='synth']")
    assert "the server has no sampled piano" in page.text_content("#toast")
    assert page.input_value("#piano-choice") == "synth"
    page.wait_for_function("sfsApp.ui.playhead !== null && sfsApp.ui.playhead > 4")
    page.click("#play")
