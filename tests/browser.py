"""A page rendered by headless Chromium, driven over the DevTools protocol.

:func:`render` opens one HTML file in ``chromium --headless
--remote-debugging-pipe`` (no extra package: the protocol is JSON messages
ending in NUL on file descriptors 3 and 4), waits for the page's load event,
and returns a :class:`Rendered`: every console error and uncaught exception
the page raised, every resource that failed to load, each ``<img>`` with its
natural size (0 when it did not load), the page's size, and optionally a PNG
screenshot of the whole page. Used by ``tests/test_browser.py`` and by
``docs/_tools/screenshots.py``, which regenerates the dashboard screenshot in
``docs/``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the names Debian and others give the browser
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The path of a Chromium executable, or None."""
    env = os.environ.get("CULTURE_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, EXECUTABLES) if p), None)


@dataclass
class Rendered:
    errors: list[str] = field(default_factory=list)     # console errors, exceptions, failed loads
    #: {"src", "complete", "width", "height" (natural size: 0 when not loaded), "shown" (displayed width), "parent" (class)}
    images: list[dict] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)                     # page's scroll width, height
    title: str = ""
    screenshot: bytes | None = None                    # PNG of the whole page


class _Pipe:
    def __init__(self, exe: str, profile: str):
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]

        def fds():  # the browser reads commands on fd 3, writes answers on fd 4
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4, so neither dup2 clobbers the other
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(args, preexec_fn=fds, pass_fds=(3, 4, to_browser_r, from_browser_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


_IMAGES = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.src.slice(0, 80), complete: i.complete,
                                                 width: i.naturalWidth, height: i.naturalHeight,
                                                 shown: i.clientWidth, parent: i.parentElement.className})),
  size: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
  title: document.title})"""


def render(page: Path, width: int = 1280, screenshot: bool = False, timeout: float = 60) -> Rendered:
    """Open ``page`` (an HTML file) in headless Chromium; see the module docstring."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium executable (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="culture-chromium-") as profile:
        pipe = _Pipe(exe, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            state = json.loads(pipe.send("Runtime.evaluate", {"expression": _IMAGES, "returnByValue": True},
                                         session=session)["result"]["value"])
            out = Rendered(images=state["images"], size=tuple(state["size"]), title=state["title"])
            if screenshot:
                w, h = out.size
                shot = pipe.send("Page.captureScreenshot",
                                 {"format": "png", "captureBeyondViewport": True,
                                  "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}},
                                 session=session, timeout=timeout)
                out.screenshot = base64.b64decode(shot["data"])
            pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush pending events
            out.errors = _errors(pipe.events)
            return out
        finally:
            pipe.close()


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            errors.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return errors
