"""The HTML viewer in real headless browsers (Chromium, Firefox), on the bundled generated
conversation.

The transcript is the conversation's reference (``testing.transcripts.transcript_of``): word
times are exact by construction, so seeking and highlighting can be checked to the word.
Assertions are on the DOM and the media element, never on pixels.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmora.speech.formats import RenderOptions, write_outputs
from modelmora.speech.transcript import Transcript
from modelmora.testing.browser import (
    chromium,
    chromium_available,
    console_errors,
    firefox,
    firefox_available,
)
from modelmora.testing.transcripts import transcript_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(meeting: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Transcript]:
    """The page for the meeting, with its recording beside it (referenced relatively)."""
    folder = tmp_path_factory.mktemp("viewer")
    audio = Path(shutil.copy(meeting.wav, folder / "meeting.wav"))
    transcript = transcript_of(meeting)
    transcript.segments[3].words[1].probability = 0.2  # one doubtful word
    options = RenderOptions(audio=str(audio), summary="The launch is on the first of June.")
    (path,) = write_outputs(transcript, folder, "meeting", ["html"], options)
    return path, transcript


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    if not chromium_available():
        pytest.skip("needs chromium, chromium-driver and selenium (scripts/setup.sh installs them)")
    downloads = tmp_path_factory.mktemp("downloads")
    with chromium(str(downloads)) as driver:
        yield driver, downloads


@pytest.fixture
def opened(browser: tuple[Any, Path], page: tuple[Path, Transcript]) -> tuple[Any, Transcript]:
    driver, _ = browser
    path, transcript = page
    driver.get(path.as_uri())
    _wait(driver, "return !!(window.modelmora && window.modelmora.ready)")
    _wait(driver, "return document.getElementById('mm-audio').readyState >= 1")
    return driver, transcript


def _wait(driver: Any, script: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _current_time(driver: Any) -> float:
    return float(driver.execute_script("return document.getElementById('mm-audio').currentTime"))


def test_the_page_loads_with_every_turn_and_no_console_error(
    opened: tuple[Any, Transcript], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver, transcript = opened
    assert console_errors(driver) == []
    turns = driver.find_elements(By.CSS_SELECTOR, ".turn")
    assert len(turns) == len(transcript.segments)  # the speakers alternate every segment
    labels = [t.find_element(By.CSS_SELECTOR, ".spk").text for t in turns]
    assert labels == [s.speaker for s in transcript.segments]
    stamps = [t.find_element(By.CSS_SELECTOR, ".ts").text for t in turns]
    assert stamps[1] == f"[00:00:{int(transcript.segments[1].start):02d}]"
    colours = {t.value_of_css_property("border-left-color") for t in turns}
    assert len(colours) == 2
    low = driver.find_elements(By.CSS_SELECTOR, ".w.low")
    assert [w.text for w in low] == [transcript.segments[3].words[1].word.strip()]
    assert "first of June" in driver.find_element(By.ID, "mm-summary").text
    assert driver.save_screenshot(str(tmp_path / "viewer.png"))


def test_clicking_a_word_seeks_to_its_start(opened: tuple[Any, Transcript]) -> None:
    from selenium.webdriver.common.by import By

    driver, transcript = opened
    words = [w for s in transcript.segments for w in s.words]
    for index in (7, 40, len(words) - 2):
        driver.find_element(By.CSS_SELECTOR, f'.w[data-i="{index}"]').click()
        _wait(driver, "return !document.getElementById('mm-audio').seeking")
        assert abs(_current_time(driver) - words[index].start) <= 0.05
        now = driver.find_element(By.CSS_SELECTOR, ".w.now")
        assert now.get_attribute("data-i") == str(index)


def test_playback_highlights_the_word_being_spoken(opened: tuple[Any, Transcript]) -> None:
    from selenium.webdriver.common.by import By

    driver, transcript = opened
    words = [w for s in transcript.segments for w in s.words]
    driver.find_element(By.CSS_SELECTOR, '.w[data-i="20"]').click()
    driver.find_element(By.TAG_NAME, "body").send_keys(" ")  # space plays
    _wait(driver, f"return document.getElementById('mm-audio').currentTime > {words[23].start}")
    driver.find_element(By.TAG_NAME, "body").send_keys(" ")  # and pauses
    _wait(driver, "return document.getElementById('mm-audio').paused")
    driver.execute_script("window.modelmora.seek(document.getElementById('mm-audio').currentTime)")
    t = _current_time(driver)
    expected = max(i for i, w in enumerate(words) if w.start <= t + 1e-3)
    assert expected > 20
    now = driver.find_element(By.CSS_SELECTOR, ".w.now")
    assert now.get_attribute("data-i") == str(expected)
    assert now.text == words[expected].word.strip()
    assert len(driver.find_elements(By.CSS_SELECTOR, ".w.now")) == 1


def test_renaming_a_speaker_renames_every_turn_and_the_export(
    opened: tuple[Any, Transcript], browser: tuple[Any, Path]
) -> None:
    import pysrt
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, transcript = opened
    _, downloads = browser
    name = driver.find_element(By.CSS_SELECTOR, '.mm-name[data-spk="1"]')
    name.click()
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("Maria Garcia", Keys.ENTER)
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".spk")]
    assert labels == [
        "Maria Garcia" if s.speaker == "SPEAKER_01" else "SPEAKER_00" for s in transcript.segments
    ]
    # Correct one word (double-click, type, Enter), then export the SRT with the button.
    word = driver.find_element(By.CSS_SELECTOR, '.w[data-i="0"]')
    driver.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('dblclick', {bubbles: true}))", word
    )
    word.send_keys(Keys.CONTROL, "a")
    word.send_keys("Hello", Keys.ENTER)
    target = downloads / "meeting.srt"
    target.unlink(missing_ok=True)
    driver.find_element(By.CSS_SELECTOR, '[data-export="srt"]').click()
    _wait(driver, "return true")
    deadline = time.monotonic() + 10
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    cues = pysrt.open(str(target))
    assert len(cues) == len(transcript.segments)
    for cue, segment in zip(cues, transcript.segments, strict=True):
        who = "Maria Garcia" if segment.speaker == "SPEAKER_01" else "SPEAKER_00"
        assert cue.text.startswith(f"{who}: ")
        assert cue.start.ordinal == round(segment.start * 1000)
    assert cues[0].text.startswith("SPEAKER_00: Hello morning.")
    vtt = driver.execute_script("return window.modelmora.exportText('vtt')")
    assert "<v Maria Garcia>" in vtt
    assert console_errors(driver) == []


def test_search_marks_every_match_and_steps_through_them(opened: tuple[Any, Transcript]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, transcript = opened
    box = driver.find_element(By.ID, "mm-search")
    box.send_keys("login bugs")
    _wait(driver, "return document.querySelectorAll('.w.hit').length > 0")
    expected = sum(s.text.lower().count("login bugs") for s in transcript.segments)
    assert expected == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, ".w.hit")) == 2 * expected
    assert driver.find_element(By.ID, "mm-hits").text == f"1 of {expected}"
    box.send_keys(Keys.ENTER)
    assert driver.find_element(By.ID, "mm-hits").text == f"2 of {expected}"
    # Typing in the search box must not start playback (space is a character there).
    assert driver.execute_script("return document.getElementById('mm-audio').paused")


def test_an_undiarized_page_reads_in_paragraphs(
    browser: tuple[Any, Path], page: tuple[Path, Transcript], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from modelmora.speech.formats import speaker_turns

    driver, _ = browser
    transcript = copy.deepcopy(page[1])
    for segment in transcript.segments:
        segment.speaker = None
        for word in segment.words:
            word.speaker = None
    (path,) = write_outputs(transcript, tmp_path, "plain", ["html"])
    driver.get(path.as_uri())
    _wait(driver, "return !!(window.modelmora && window.modelmora.ready)")
    assert driver.find_elements(By.CSS_SELECTOR, ".spk") == []
    turns = driver.find_elements(By.CSS_SELECTOR, ".turn")
    assert len(turns) == len(list(speaker_turns(transcript))) > 1
    assert console_errors(driver) == []


_SEEKED = """new Promise((done) => {
  const audio = document.getElementById("mm-audio");
  audio.addEventListener("seeked", () => done(audio.currentTime), {once: true});
  document.querySelector('.w[data-i="%d"]').click();
})"""

_PLAY_A_SECOND = """new Promise((done) => {
  const audio = document.getElementById("mm-audio");
  const space = () => document.body.dispatchEvent(
    new KeyboardEvent("keydown", {key: " ", code: "Space", bubbles: true}));
  audio.addEventListener("playing", () => setTimeout(() => {
    space();
    setTimeout(() => done([audio.paused, audio.currentTime,
      [...document.querySelectorAll(".w.now")].map((w) => +w.dataset.i)]), 200);
  }, 1000), {once: true});
  space();
})"""


@pytest.mark.skipif(not firefox_available(), reason="needs firefox-esr (scripts/setup.sh)")
def test_the_page_works_in_firefox(page: tuple[Path, Transcript]) -> None:
    path, transcript = page
    words = [w for s in transcript.segments for w in s.words]
    with firefox() as browser:
        browser.navigate(path.as_uri())
        assert browser.evaluate("window.modelmora.ready")
        assert browser.evaluate("document.querySelectorAll('.turn').length") == len(
            transcript.segments
        )
        browser.evaluate(
            "new Promise((done) => { const a = document.getElementById('mm-audio');"
            " if (a.readyState >= 1) done(); else a.onloadedmetadata = () => done(); })"
        )
        assert abs(browser.evaluate(_SEEKED % 40) - words[40].start) <= 0.05
        paused, t, now = browser.evaluate(_PLAY_A_SECOND)
        expected = max(i for i, w in enumerate(words) if w.start <= t + 1e-3)
        assert paused and t > words[40].start + 0.5
        assert now == [expected]
        renamed = browser.evaluate(
            "(() => { const box = document.querySelector('.mm-name[data-spk=\"1\"]');"
            " box.value = 'Maria'; box.dispatchEvent(new Event('change'));"
            " return [...document.querySelectorAll('.spk')].map((e) => e.textContent); })()"
        )
        assert renamed == [
            "Maria" if s.speaker == "SPEAKER_01" else "SPEAKER_00" for s in transcript.segments
        ]
        assert "\nMaria: " in browser.evaluate("window.modelmora.exportText('srt')")
        assert browser.console_errors() == []
