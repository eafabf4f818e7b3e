"""Headless Chromium driven through its DevTools protocol (a WebSocket on loopback, websocket-client), for the
tests that load the book's pages as a reader's browser would: the console errors and exceptions a page raised,
and what a script evaluated in it returns.

    with Chromium(chromium_binary()) as browser:
        report = browser.load("file:///tmp/book/index.html", "document.images.length")
        report.errors, report.value
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    value: Any = None  # what the script evaluated after the load event returned


class Chromium:
    """One headless browser with its own throwaway profile; `load` opens a page in a fresh tab."""

    def __init__(self, binary: str, start_timeout: float = 60.0, timeout: float = 60.0):
        self.profile = Path(tempfile.mkdtemp(prefix="minidiff-chromium-"))
        self.timeout = timeout
        flags = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 f"--user-data-dir={self.profile}"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI runs as root)
        self.process = subprocess.Popen([binary, *flags, "about:blank"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.ws = self._connect(start_timeout)
        except BaseException:
            self.close()
            raise
        self.next_id = 0
        self.events: list[dict] = []

    def _connect(self, timeout: float) -> Any:
        """Chromium writes the port it chose (and the browser's WebSocket path) into DevToolsActivePort."""
        import websocket

        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.process.returncode} before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not open its DevTools port within {timeout} s")
            time.sleep(0.05)
        port, path = port_file.read_text().split()
        return websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout,
                                           suppress_origin=True)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def load(self, url: str, script: str = "null") -> PageReport:
        """Open `url` in a new tab, wait for its load event (images included), evaluate `script` there."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session)
            self.events = []
            navigation = self.call("Page.navigate", session, url=url)
            if "errorText" in navigation:
                return PageReport(errors=[f"navigation failed: {navigation['errorText']}"])
            self._wait_for("Page.loadEventFired", session)
            result = self.call("Runtime.evaluate", session, expression=script, returnByValue=True,
                               awaitPromise=True)
            report = PageReport(value=result.get("result", {}).get("value"))
            if "exceptionDetails" in result:
                report.errors.append(f"the test's script failed: {result['exceptionDetails']}")
            report.errors += [_describe(e) for e in self.events if e.get("sessionId") == session and _is_error(e)]
            return report
        finally:
            self.call("Target.closeTarget", targetId=target)

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_error(event: dict) -> bool:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Log.entryAdded":
        return params.get("entry", {}).get("level") == "error"
    return False


def _describe(event: dict) -> str:
    params = event["params"]
    if event["method"] == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
    if event["method"] == "Runtime.consoleAPICalled":
        return "console." + params["type"] + ": " + " ".join(str(a.get("value", a)) for a in params.get("args", []))
    entry = params["entry"]
    return f"{entry.get('source')} {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".strip()
