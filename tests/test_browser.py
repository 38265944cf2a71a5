"""The browser page in real headless Chromium with fake camera and microphone.

Debian's `chromium` (skipped without it) publishes a real face (scikit-image's
astronaut photo, as a y4m) and hesitant speech (espeak-ng, as a WAV) from the
served page to a real `ahstream serve --token-file` process; the test drives the
page over the Chrome DevTools Protocol and checks both what the page shows (DOM)
and what the session's events websocket carries. A second tab watches the same
session in subscribe-only mode with the session's read token. Along the way: a refused
Start leaves the camera and microphone off, a dropped events socket is resubscribed without
showing anything twice, and a new session starts from an empty view. A second test gives the
page (still served by the real server) a stand-in WebSocket that replays 5,000 events at
once, as a long session does to a late subscriber, and checks the page stays responsive. A
third makes a publishing page's first events socket fail (it retries, then gives up: camera
and microphone off, the session DELETEd) and plays a watched session that drops a tentative
word, has more cues and segments than the page keeps, and ends without a decision.

Screenshots go to the test's tmp dir; with ``AHSTREAM_SCREENSHOTS=DIR`` they are also
written to DIR (``AHSTREAM_SCREENSHOTS=clients/web/screenshots`` refreshes the README's).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from clients.send import ws_url
from tests.conftest import ServeProcess
from tests.media import espeak_speech, silence
from tests.mediafiles import astronaut_frames

TOKEN = "browser-test-token-7Hq2"
# A hesitant answer: fillers, hedges, "but", a correction and a 2 s pause, so the page
# has word and voice cues to show.
ANSWER = (
    "Um, I don't know. I guess I should probably exercise more, but honestly I'm not sure I can.",
    "Uh, maybe, kind of. I mean, I would like to, but work is really busy right now, so, um, "
    "we'll see.",
)
FPS = 15
SCREENSHOT_ENV = "AHSTREAM_SCREENSHOTS"
WINDOW = (1280, 1000)

# What the page shows, read from the DOM by the ids app.js keeps stable.
DOM_STATE = """(() => {
  const q = (s) => document.querySelector(s);
  const all = (s) => [...document.querySelectorAll(s)];
  return {
    state: q('#state').dataset.state,
    stateText: q('#state').textContent,
    tokenPanel: !q('#token-panel').hidden,
    session: q('#session-id').textContent,
    readToken: q('#read-token').value,
    frames: Number(q('#plot').dataset.frames),
    points: all('#plot polyline').reduce((n, l) => n + l.points.numberOfItems, 0),
    threshold: q('#threshold-line') !== null,
    segments: all('#plot rect.segment').length,
    committed: all('#committed .word.committed').map((e) => e.textContent),
    looks: {
      committed: all('#committed .word.committed').slice(0, 1).map((e) => {
        const s = getComputedStyle(e); return s.fontStyle + ' ' + s.color; })[0],
      tentative: (() => { const s = getComputedStyle(q('#tentative'));
        return s.fontStyle + ' ' + s.color; })(),
    },
    cuedWords: all('#committed .word.cued').length,
    cues: all('#cues .cue').map((e) => ({
      cue: e.dataset.cue, modality: e.dataset.modality,
      row: e.closest('.cue-row').dataset.row, title: e.title})),
    chips: all('#cue-list .chip').length,
    decision: q('#decision').textContent,
    label: q('#decision').dataset.label,
    final: q('#decision').dataset.final,
    announced: q('#decision-announce').textContent,
    videoLive: q('#preview').srcObject !== null && q('#preview').videoWidth > 0,
    previewNote: !q('#preview-note').hidden,
  };
})()"""

# Every stream the page gets from getUserMedia, kept so a test can see whether it was stopped.
RECORD_MEDIA = """(() => {
  const md = navigator.mediaDevices, get = md.getUserMedia.bind(md);
  window.__streams = [];
  md.getUserMedia = async (c) => { const s = await get(c); window.__streams.push(s); return s; };
})()"""
# Camera and microphone are off: every track the page ever opened has ended.
MEDIA_RELEASED = """(() => ({
  streams: window.__streams.length,
  live: window.__streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState !== 'ended')
    .map((t) => t.kind),
  preview: document.getElementById('preview').srcObject !== null,
}))()"""
# What the decision card and the side panels show (a new session must start from nothing).
DECISION_CARD = """(() => {
  const q = (s) => document.querySelector(s);
  return {
    decision: q('#decision').textContent, label: q('#decision').dataset.label,
    final: q('#decision').dataset.final, detail: q('#decision-detail').textContent,
    announced: q('#decision-announce').textContent,
    gauge: q('#gauge-fill').style.width, gaugeClass: q('#gauge-fill').className,
    mark: q('#gauge-mark').style.left, evidence: q('#evidence').textContent,
    p: q('#p').textContent, modalities: q('#modalities').children.length,
    summary: q('#cue-summary').textContent, status: q('#status').textContent,
    log: q('#log').textContent,
  };
})()"""
# A session's events socket dropped by the network (not by the page): app.js's `ws`.
DROP_EVENTS_SOCKET = """new Promise((resolve) => {
  ws.close();
  const poll = setInterval(() => {
    const s = document.getElementById('state');
    if (s.dataset.state === 'reconnecting') { clearInterval(poll); resolve(s.textContent); }
  }, 5);
})"""

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--remote-debugging-port=0",  # any free port; Chromium writes it to DevToolsActivePort
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


# ---------------------------------------------------------------- fake media


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """RGB frames as a 4:2:0 YUV4MPEG2 file; Chromium's fake camera wants ``C420``."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420\n".encode())
        for rgb in frames:
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n" + yuv.to_ndarray().tobytes())
    return path


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    """16-bit mono WAV of float audio in [-1, 1]."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    return exe


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(y4m of a real face drifting in a 10 s loop, WAV of a ~20 s hesitant answer)."""
    d = tmp_path_factory.mktemp("fake_media")
    first, second = (espeak_speech(s, rate_wpm=140) for s in ANSWER)
    audio = np.concatenate([silence(0.5), first, silence(2.0), second, silence(1.0)])
    wav = write_wav(d / "answer.wav", audio)
    y4m = write_y4m(d / "face.y4m", astronaut_frames(10 * FPS), FPS)
    return y4m, wav


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real `ahstream serve` that requires a service token."""
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"# browser test\n{TOKEN}\n")
    srv = ServeProcess("--token-file", str(token_file))
    yield srv
    srv.stop()


# ---------------------------------------------------------------- DevTools protocol


class Cdp:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.exceptions: list[str] = []
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(
                    details.get("exception", {}).get("description") or details.get("text", "")
                )
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result."""
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = fut
        await self.ws.send_str(
            json.dumps({"id": self._next_id, "method": method, "params": params})
        )
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page and return its JSON value."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def dom(self) -> dict[str, Any]:
        """The page's state as its DOM shows it."""
        return await self.js(DOM_STATE)

    async def wait(
        self,
        what: str,
        ready: Callable[[dict[str, Any]], bool],
        timeout: float,
        expression: str = DOM_STATE,
    ) -> dict[str, Any]:
        """Poll the DOM (``expression``'s view of it) until ``ready`` holds; fail with what
        the page shows instead."""
        deadline = time.monotonic() + timeout
        while True:
            dom = await self.js(expression)
            if ready(dom):
                return dom
            if time.monotonic() > deadline:
                pytest.fail(f"page never showed {what} within {timeout} s; it shows {dom}")
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, the camera preview blurred (the fake camera shows a
        sample photo of a person; committed screenshots carry no one's face)."""
        await self.js(
            "document.querySelectorAll('video').forEach(v => v.style.filter = 'blur(14px)')"
        )
        width, height = await self.js(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        shot = await self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        await self.js("document.querySelectorAll('video').forEach(v => v.style.filter = '')")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Browser:
    """Headless Chromium with fake media devices, driven over DevTools."""

    def __init__(self, http: aiohttp.ClientSession, devtools: str) -> None:
        self.http = http
        self.devtools = devtools
        self.pages: list[Cdp] = []

    async def open(self, url: str, init_script: str | None = None) -> Cdp:
        """A new tab at ``url``, loaded; ``init_script`` runs before the page's own scripts."""
        first = "about:blank" if init_script else url
        async with self.http.put(f"{self.devtools}/json/new?{first}") as resp:
            target = await resp.json()
        ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Cdp(ws)
        self.pages.append(page)
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        if init_script:
            await page.call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
            await page.call("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while await page.js("document.readyState") != "complete" or not await page.js(
            "typeof watch === 'function'"
        ):
            assert time.monotonic() < deadline, f"{url} did not load"
            await asyncio.sleep(0.1)
        return page


@asynccontextmanager
async def chromium_browser(exe: str, y4m: Path, wav: Path, profile: Path) -> AsyncIterator[Browser]:
    """Start Chromium (own process group), yield a `Browser`, then stop it."""
    proc = subprocess.Popen(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--use-file-for-fake-video-capture={y4m}",
            f"--use-file-for-fake-audio-capture={wav}",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            browser = Browser(http, f"http://127.0.0.1:{port}")
            try:
                yield browser
            finally:
                for page in browser.pages:
                    await page.ws.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- the test


async def _collect(url: str, events: list[dict[str, Any]]) -> None:
    """Append every event of the websocket at ``url`` until `session.ended`."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            events.append(json.loads(msg.data))
            if events[-1]["type"] == "session.ended":
                break


def _norm(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


async def test_page_publishes_camera_and_mic_and_shows_the_live_signal(
    chromium: str, fake_media: tuple[Path, Path], token_server: Any, tmp_path: Path
) -> None:
    y4m, wav = fake_media
    shots = [tmp_path]
    if os.environ.get(SCREENSHOT_ENV):
        shots.append(Path(os.environ[SCREENSHOT_ENV]))
        shots[-1].mkdir(parents=True, exist_ok=True)

    async def screenshot(page: Cdp, name: str) -> None:
        first = await page.screenshot(shots[0] / name)
        for d in shots[1:]:
            shutil.copyfile(first, d / name)

    async with chromium_browser(chromium, y4m, wav, tmp_path / "profile") as browser:
        page = await browser.open(token_server.url + "/")
        await page.js(RECORD_MEDIA)

        # The server needs a token: the page asks for one instead of failing silently, and
        # a refused Start turns the camera and microphone off again.
        await page.js("document.getElementById('start').click()")
        dom = await page.wait("the token prompt", lambda d: d["state"] == "token", 20)
        assert dom["tokenPanel"] and not dom["session"] and dom["stateText"] == "token needed"
        released = await page.js(MEDIA_RELEASED)
        assert released == {"streams": 1, "live": [], "preview": False}, released
        await page.js("document.getElementById('token').value = 'not-the-token'")
        await page.js("document.getElementById('start').click()")
        dom = await page.wait("the refusal", lambda d: d["stateText"] == "token refused", 20)
        released = await page.js(MEDIA_RELEASED)
        assert released == {"streams": 2, "live": [], "preview": False}, released
        assert not dom["session"]
        assert await page.js("document.getElementById('start').disabled") is False
        await page.js(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        await page.js("document.getElementById('start').click()")
        dom = await page.wait("a live session", lambda d: d["state"] == "live", 20)
        sid = dom["session"]
        assert re.fullmatch(r"[0-9a-f]{16}", sid) and dom["readToken"]
        assert (await page.js(MEDIA_RELEASED))["live"], "publishing without camera/microphone"

        # The test's own subscriber, and a second tab that only watches (read token).
        events: list[dict[str, Any]] = []
        collector = asyncio.create_task(
            _collect(ws_url(token_server.url, f"/sessions/{sid}/events"), events)
        )
        watcher = await browser.open(f"{token_server.url}/?session={sid}")
        await watcher.wait("the token prompt", lambda d: d["state"] == "token", 10)
        await watcher.js(f"document.getElementById('token').value = {json.dumps(dom['readToken'])}")
        await watcher.js("document.getElementById('watch').click()")
        await watcher.wait("watching", lambda d: d["state"] == "watching", 10)

        # The live signal: transcript words, plotted frames, threshold and cues. (The fake
        # microphone plays from getUserMedia on, so the session may miss the first "Um";
        # the file loops.)
        def shows_signal(d: dict[str, Any]) -> bool:
            cues = {c["cue"] for c in d["cues"]}
            return (
                len(d["committed"]) >= 20
                and d["frames"] >= 120
                and len(d["cues"]) >= 4
                and {"filler_sound", "hedge"} <= cues
            )

        live = await page.wait("transcript, plot and word cues", shows_signal, 45)
        await screenshot(page, "page-live.png")
        assert live["videoLive"] and not live["previewNote"], "the camera preview shows no video"
        assert live["points"] >= 0.9 * min(live["frames"], 600) and live["threshold"]
        assert live["decision"] in ("A/H", "no A/H") and live["final"] == "false"
        # Screen readers hear the decision when it changes, not the p of every video event.
        assert live["announced"] == "Running decision: " + live["decision"]
        reference = {_norm(w) for part in ANSWER for w in part.split()}
        heard = [_norm(w) for w in live["committed"]]
        assert sum(w in reference for w in heard) >= 0.8 * len(heard), heard
        assert live["looks"]["tentative"].startswith("italic")
        assert live["looks"]["committed"].startswith("normal")
        assert (
            live["looks"]["committed"].split(" ", 1)[1]
            != live["looks"]["tentative"].split(" ", 1)[1]
        )
        for cue in live["cues"]:
            assert cue["row"] == cue["modality"] and " s · strength " in cue["title"]
        assert live["cuedWords"] >= 3 and live["chips"] >= 4

        watched = await watcher.wait(
            "the watched session", lambda d: d["frames"] >= 20 and len(d["committed"]) >= 10, 10
        )
        assert watched["session"] == sid
        await screenshot(watcher, "page-watch.png")

        # The events socket drops while publishing: the page resubscribes (camera and
        # microphone still on) and rebuilds the view from the server's replay; the words and
        # cues compared with the test's own subscriber below show nothing twice.
        assert await page.js(DROP_EVENTS_SOCKET) == "live (reconnecting)"
        assert (await page.js(MEDIA_RELEASED))["live"], "the drop stopped the camera/microphone"
        again = await page.wait("the resubscribed session", lambda d: d["state"] == "live", 10)
        assert again["frames"] >= live["frames"] and again["points"] > 0, "the plot was lost"
        await page.wait(
            "the replayed words", lambda d: len(d["committed"]) >= len(live["committed"]), 10
        )

        # Stop: DELETE ends the session; both tabs show the final decision.
        await page.js("document.getElementById('stop').click()")
        end = await page.wait("the end", lambda d: d["state"] == "ended", 20)
        assert end["stateText"] == "ended (deleted)" and not end["videoLive"]
        assert end["final"] == "true" and end["label"] in ("0", "1")
        assert end["announced"] == "Final decision: " + end["decision"]
        watched = await watcher.wait("the end", lambda d: d["state"] == "ended", 10)
        await screenshot(page, "page-ended.png")
        await asyncio.wait_for(collector, 10)
        assert (await page.js(MEDIA_RELEASED))["live"] == []

        # Watching an unknown session next: nothing of the ended session stays on screen.
        await page.js("document.getElementById('tab-watch').click()")
        await page.js("document.getElementById('watch-session').value = '0123456789abcdef'")
        await page.js("document.getElementById('watch').click()")
        unknown = await page.wait("the refusal", lambda d: d["state"] == "error", 10)
        assert unknown["stateText"] == "unknown session" and unknown["session"] != sid
        assert not unknown["committed"] and not unknown["cues"] and not unknown["chips"]
        assert unknown["frames"] == unknown["points"] == unknown["segments"] == 0
        assert not unknown["threshold"]
        card = await page.js(DECISION_CARD)
        assert card == {
            "decision": "–",
            "label": "",
            "final": "false",
            "detail": "Waiting for a session.",
            "announced": "",
            "gauge": "0px",
            "gaugeClass": "fill",
            "mark": "50%",
            "evidence": "",
            "p": "p(t) –",
            "modalities": 0,
            "summary": "",
            "status": "",
            "log": "",
        }, card
        exceptions = [e for p in browser.pages for e in p.exceptions]

    assert not exceptions, exceptions
    # The events websocket carried what the page drew: the same committed words and cues.
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    assert all(e["session"] == sid for e in events)
    assert not [e for e in events if e["type"] == "error"], "the server reported errors"
    assert events[-1]["reason"] == "deleted"
    frames = [e for e in events if e["type"] == "frame"]
    assert len(frames) >= 50
    assert sum(f["modalities"]["video"] for f in frames) >= 0.9 * len(frames)
    assert sum(f["modalities"]["audio"] for f in frames) >= 0.9 * len(frames)
    committed = [
        w["w"] for e in events if e["type"] == "transcript" and e["final"] for w in e["words"]
    ]
    assert end["committed"] == committed == watched["committed"]
    cues = [e for e in events if e["type"] == "cue"]
    assert len(end["cues"]) == len(cues) == len(watched["cues"])
    assert end["segments"] == len([e for e in events if e["type"] == "segment"])
    final = [e for e in events if e["type"] == "video" and e["final"]]
    assert len(final) == 1 and end["label"] == str(final[0]["label"])
    assert end["decision"] == ("A/H" if final[0]["label"] else "no A/H")


# ---------------------------------------------------------------- a long session's replay

# A late subscriber to a long session first gets up to 5,000 critical events at once (the
# server's replay). A real session cannot publish that many in a test's time, so this page
# (served by the real server) gets a WebSocket stand-in for session REPLAY_SID only: it opens,
# waits for `__fake.start()`, then delivers the replay 100 messages per task (a network read's
# worth). Other URLs get the browser's own WebSocket.
REPLAY_SID = "feedfacefeedface"
REPLAY_N = 2400  # transcripts (3 words each) and cues; plus 200 segments: 5,000 events
FAKE_EVENTS_SOCKET = """(() => {
  const SID = "__SID__", N = __N__, Real = window.WebSocket;
  const ev = (type, fields) => JSON.stringify({v: 1, type: type, session: SID, ...fields});
  const word = (i, x, k, t) => ({
    w: k === 1 ? "<i>w" + i + x + "</i>" : "w" + i + x, t0: t + 0.4 * k, t1: t + 0.4 * k + 0.35});
  const transcript = (i) => ev("transcript", {t0: 1.5 * i, t1: 1.5 * i + 1.2, text: "",
    final: true, words: ["a", "b", "c"].map((x, k) => word(i, x, k, 1.5 * i))});
  const cue = (i) => ev("cue", {t0: 1.5 * i + 0.1, t1: 1.5 * i + 0.9, cue: "hedge",
    modality: ["text", "voice", "face", "cross"][i % 4], strength: 0.6,
    detail: "<img src=x onerror=window.__xss=1>"});
  const replay = [ev("session.started", {profile: "lite", models: {}, analysis_hz: 10})];
  for (let i = 0; i < N; i++) {
    replay.push(transcript(i), cue(i));
    if (i % 12 === 0) replay.push(ev("segment", {t0: 1.5 * i, t1: 1.5 * i + 3, peak: 0.8}));
  }
  const fake = window.__fake = {sockets: [], replay: replay, go: false,
    start() {
      fake.go = true;
      fake.sockets.filter((s) => s.readyState === 1).forEach((s) => s.deliver(fake.replay));
    },
    more(i) { fake.replay.push(transcript(i), cue(i)); },  // published while disconnected
  };
  class FakeSocket {
    constructor(url) {
      this.url = url; this.readyState = 0; this.delivered = 0; fake.sockets.push(this);
      setTimeout(() => { this.readyState = 1; this.onopen && this.onopen({});
        if (fake.go) this.deliver(fake.replay); }, 0);
    }
    deliver(list) {  // messages as strings, or events without v/session as objects
      const ch = new MessageChannel(); let i = 0;
      ch.port1.onmessage = () => {
        for (const end = Math.min(i + 100, list.length); i < end && this.readyState === 1; i++) {
          const m = list[i];
          this.onmessage({data: typeof m === "string" ? m : ev(m.type, m)});
          this.delivered++;
        }
        if (i < list.length && this.readyState === 1) ch.port2.postMessage(0);
        else ch.port1.close();
      };
      ch.port2.postMessage(0);
    }
    close() {  // also what the network does when it drops the connection
      if (this.readyState > 1) return;
      this.readyState = 3; setTimeout(() => this.onclose && this.onclose({}), 0);
    }
    send() {}
  }
  window.WebSocket = function (url, protocols) {
    if (url.includes("/sessions/" + SID + "/")) return new FakeSocket(url);
    return new Real(url, protocols);
  };
})()""".replace("__SID__", REPLAY_SID).replace("__N__", str(REPLAY_N))

# The replayed view: words and cues as drawn, and what must never come from event text.
REPLAY_STATE = """(() => {
  const all = (s) => [...document.querySelectorAll(s)];
  const words = all('#committed .word').map((e) => e.textContent);
  const box = document.getElementById('transcript');
  return {
    state: document.getElementById('state').dataset.state,
    words: words.length, unique: new Set(words).size,
    first: words[0], last: words[words.length - 1],
    scrolled: box.scrollHeight - box.scrollTop - box.clientHeight < 2,
    cues: all('#cues .cue').length,
    rows: all('#cues .cue-row').map((r) => r.querySelectorAll('.cue').length),
    count: document.getElementById('cues').dataset.count,
    chips: all('#cue-list .chip')
      .filter((c) => c.tabIndex === 0 && c.getAttribute('aria-label') === c.title).length,
    segments: all('#plot rect.segment').length,
    frames: Number(document.getElementById('plot').dataset.frames),
    points: all('#plot polyline').reduce((n, l) => n + l.points.numberOfItems, 0),
    delivered: window.__fake.sockets.reduce((n, s) => n + s.delivered, 0),
    sockets: window.__fake.sockets.length,
    markup: document.querySelectorAll('#transcript i, img').length + (window.__xss || 0),
  };
})()"""
MODALITIES = {"audio": True, "speech": True, "video": True, "face": True, "text": True}


async def test_page_renders_a_long_sessions_replay_without_freezing_and_resubscribes(
    chromium: str, fake_media: tuple[Path, Path], token_server: Any, tmp_path: Path
) -> None:
    y4m, wav = fake_media
    async with chromium_browser(chromium, y4m, wav, tmp_path / "profile") as browser:
        page = await browser.open(
            f"{token_server.url}/?session={REPLAY_SID}", init_script=FAKE_EVENTS_SOCKET
        )
        await page.wait("the subscription", lambda d: d["state"] == "watching", 10)
        total = await page.js("__fake.replay.length")
        assert total == 5001  # session.started and the server's 5,000 replayed events

        # The page stays responsive while it takes the replay: DevTools round trips (which
        # wait for the page's main thread) keep completing. As shipped, each event forced a
        # layout (a 1-2.5 minute freeze); now it draws once per animation frame.
        await page.js("__fake.start()")
        started, slowest = time.monotonic(), 0.0
        while True:
            t = time.monotonic()
            shown = await page.js(REPLAY_STATE)
            slowest = max(slowest, time.monotonic() - t)
            if shown["delivered"] == total and shown["words"] == 3000:
                break
            assert time.monotonic() - started < 60, f"the replay is still not shown: {shown}"
            await asyncio.sleep(0.1)
        assert slowest < 10, f"the page did not answer for {slowest:.1f} s during the replay"
        await asyncio.sleep(0.3)  # the last animation frame
        shown = await page.js(REPLAY_STATE)
        # 7,200 words replayed, the newest 3,000 shown (MAX_WORDS), each once; the cue rows
        # show the last minute: cues 2360-2399, ten per modality; 3 segments in that minute.
        assert shown["words"] == shown["unique"] == 3000 and shown["scrolled"]
        assert (shown["first"], shown["last"]) == ("w1400a", "w2399c")
        assert shown["cues"] == 40 and shown["rows"] == [10, 10, 10, 10], shown
        assert shown["count"] == "500" and shown["chips"] == 10 and shown["segments"] == 3
        assert shown["markup"] == 0, "event text was inserted as markup"

        # Live frames, then the connection drops and two more results are published before
        # the page resubscribes: it shows "watching (reconnecting)", rebuilds the view from
        # the new replay without showing anything twice, and keeps the plot (frames are
        # never replayed).
        frames = [
            {
                "type": "frame",
                "t": 3590 + 0.1 * k,
                "p": 0.4,
                "evidence": "text",
                "modalities": MODALITIES,
                "words": 7200,
                "lags": {"tick": 0.1},
            }
            for k in range(30)
        ]
        await page.js(f"__fake.sockets[0].deliver({json.dumps(frames)})")
        await page.wait("the live frames", lambda d: d["points"] == 30, 10)
        # A status saying the analysis is behind the call: the page says so (it showed the
        # numbers only).
        behind = "analysis 1.6 s behind the call (CPU short): video frames are dropped"
        status = {
            "type": "status",
            "t": 3593.0,
            "lags": {"tick": 1.6},
            "dropped_video_frames": 4,
            "received_video_frames": 30,
            "rtf": 0.41,
            "asr_skipped": 2,
            "message": behind,
        }
        shown_status = await page.js(
            f"__fake.sockets[0].deliver([{json.dumps(status)}]); new Promise((r) => setTimeout("
            "() => { const s = document.getElementById('status');"
            " r([s.textContent, s.dataset.behind]); }, 100))"
        )
        assert shown_status == [
            "analysis lag 1.60 s · ASR 0.41× real time · dropped video frames 4 · " + behind,
            "true",
        ], shown_status
        state = await page.js(
            "__fake.more(2400); __fake.sockets[0].close(); new Promise((r) => setTimeout("
            "() => r(document.getElementById('state').textContent), 100))"
        )
        assert state == "watching (reconnecting)"

        def rebuilt(d: dict[str, Any]) -> bool:
            return d["sockets"] == 2 and d["state"] == "watching" and d["last"] == "w2400c"

        await page.wait("the resubscribed view", rebuilt, 20, REPLAY_STATE)
        await asyncio.sleep(0.3)
        again = await page.js(REPLAY_STATE)
        assert again["words"] == again["unique"] == 3000 and again["first"] == "w1401a"
        assert again["cues"] == 40 and again["count"] == "500" and again["chips"] == 10, again
        assert again["segments"] == 3 and again["frames"] == 30 and again["points"] == 30, again
        assert again["markup"] == 0
        exceptions = list(page.exceptions)
    assert not exceptions, exceptions


# ---------------------------------------------------------------- events that fail or end oddly

# A publishing page whose events socket fails before it ever opens (a proxy hiccup, a worker
# restarting): `__fail.left` sockets to /sessions/ close at once, the rest are the browser's
# own. The page's resubscribe back-off (RETRY_MS: 0.5 s doubling to 8 s, about a minute over
# its ten tries) runs 25 times faster, so giving up takes a few seconds; other timers keep
# their delays.
FAILING_EVENTS_SOCKET = """(() => {
  const Real = window.WebSocket, realTimeout = window.setTimeout;
  const BACKOFF = new Set([500, 1000, 2000, 4000, 8000]);
  window.setTimeout = (fn, ms, ...args) =>
    realTimeout(fn, BACKOFF.has(ms) ? ms / 25 : ms, ...args);
  const fail = window.__fail = {left: 0, sockets: 0};
  window.WebSocket = function (url, protocols) {
    if (!url.includes("/sessions/") || fail.left <= 0) return new Real(url, protocols);
    fail.left--;
    fail.sockets++;
    const sock = {url: url, readyState: 0, close() {}, send() {}};
    realTimeout(() => { sock.readyState = 3; sock.onclose && sock.onclose({code: 1006}); }, 0);
    return sock;
  };
})()"""
# What a session's odd ending leaves on screen.
ENDING_STATE = """(() => ({
  delivered: __fake.sockets[0].delivered,
  state: document.getElementById('state').textContent,
  committed: document.getElementById('committed').textContent.trim(),
  tentative: document.getElementById('tentative').textContent,
  summary: document.getElementById('cue-summary').textContent,
  count: document.getElementById('cues').dataset.count,
  segments: view.segments.length,
  newestSegment: view.segments.length ? view.segments[view.segments.length - 1].t0 : null,
  detail: document.getElementById('decision-detail').textContent,
  decision: document.getElementById('decision').textContent,
}))()"""


async def test_page_retries_a_failed_first_subscription_and_shows_odd_endings(
    chromium: str, fake_media: tuple[Path, Path], token_server: Any, tmp_path: Path
) -> None:
    y4m, wav = fake_media
    async with chromium_browser(chromium, y4m, wav, tmp_path / "profile") as browser:
        page = await browser.open(token_server.url + "/", init_script=FAILING_EVENTS_SOCKET)
        await page.js(RECORD_MEDIA)
        await page.js(f"document.getElementById('token').value = {json.dumps(TOKEN)}")

        # The first events socket fails once: the page subscribes again and goes live (it
        # used to say "cannot connect" and keep sending camera and microphone regardless).
        await page.js("__fail.left = 1; document.getElementById('start').click()")
        live = await page.wait("the retried subscription", lambda d: d["state"] == "live", 20)
        assert await page.js("__fail.sockets") == 1
        assert (await page.js(MEDIA_RELEASED))["live"], "publishing without camera/microphone"
        await page.js("document.getElementById('stop').click()")
        await page.wait("the end", lambda d: d["stateText"] == "ended (deleted)", 20)

        # It keeps failing: after its ten retries the page gives up, turns camera and
        # microphone off and ends the session with its DELETE.
        await page.js("__fail.left = 1000; document.getElementById('start').click()")
        await page.wait("a new session", lambda d: d["session"] not in ("", live["session"]), 20)
        gone = await page.wait("giving up", lambda d: d["stateText"] == "ended (disconnected)", 30)
        assert await page.js("__fail.sockets") == 1 + 11  # the first attempt, then 10 retries
        assert (await page.js(MEDIA_RELEASED))["live"] == []
        events: list[dict[str, Any]] = []
        url = ws_url(token_server.url, f"/sessions/{gone['session']}/events")
        await asyncio.wait_for(_collect(url, events), 20)
        assert events[-1]["type"] == "session.ended" and events[-1]["reason"] == "deleted"

        # A watched session: a tentative word the final pass dropped, 603 cues (more than
        # the 500 drawn), 1,200 segments, and an end without a decision (analysis failed).
        watcher = await browser.open(
            f"{token_server.url}/?session={REPLAY_SID}", init_script=FAKE_EVENTS_SOCKET
        )
        await watcher.wait("the subscription", lambda d: d["state"] == "watching", 10)

        def words(*spec: tuple[str, float, float]) -> list[dict[str, Any]]:
            return [{"w": w, "t0": t0, "t1": t1} for w, t0, t1 in spec]

        script: list[dict[str, Any]] = [
            {"type": "session.started", "profile": "lite", "models": {}, "analysis_hz": 10},
            {
                "type": "transcript",
                "t0": 6.14,
                "t1": 7.3,
                "text": "hard. you",
                "final": False,
                "words": words(("hard.", 6.14, 6.78), ("you", 7.0, 7.3)),
            },
            {
                "type": "transcript",
                "t0": 6.14,
                "t1": 6.86,
                "text": "hard.",
                "final": True,
                "words": words(("hard.", 6.14, 6.86)),
            },
        ]
        await watcher.js(f"__fake.sockets[0].deliver({json.dumps(script)})")
        shown = await watcher.wait("the commit", lambda d: d["delivered"] == 3, 10, ENDING_STATE)
        assert shown["committed"] == "hard." and shown["tentative"] == "", shown
        cue = {"modality": "text", "strength": 0.5, "detail": "maybe"}
        script = [
            *(
                {"type": "cue", "cue": "hedge", "t0": 8 + i, "t1": 8.3 + i, **cue}
                for i in range(600)
            ),
            *(
                {"type": "cue", "cue": "filler_sound", "t0": 9 + i, "t1": 9.2 + i, **cue}
                for i in range(3)
            ),
            *(
                {"type": "segment", "t0": 10.0 * i, "t1": 10.0 * i + 3, "peak": 0.8}
                for i in range(1200)
            ),
            {
                "type": "transcript",
                "t0": 12000.0,
                "t1": 12000.4,
                "text": "maybe",
                "final": False,
                "words": words(("maybe", 12000.0, 12000.4)),
            },
            {"type": "session.ended", "duration": 12001.0, "reason": "analysis failed"},
        ]
        await watcher.js(f"__fake.sockets[0].deliver({json.dumps(script)})")
        end = await watcher.wait(
            "the end", lambda d: d["delivered"] == 3 + len(script), 20, ENDING_STATE
        )
        await asyncio.sleep(0.3)  # the last animation frame
        end = await watcher.js(ENDING_STATE)
        assert end["state"] == "ended (analysis failed)" and end["tentative"] == "", end
        assert end["summary"] == "Cues so far: hedge ×600, filler sound ×3", end
        assert end["count"] == "500"  # drawn: the newest 500
        assert end["segments"] == 1000 and end["newestSegment"] == 11990.0, end
        assert end["decision"] == "–"
        assert end["detail"] == "Ended without a decision (analysis failed).", end
        exceptions = [e for p in browser.pages for e in p.exceptions]
    assert not exceptions, exceptions
