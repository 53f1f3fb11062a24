"""A real ``task=serve`` process on a free 127.0.0.1 port for the serving tests, and small HTTP helpers.

Every process started is stopped by its pid (SIGTERM, then SIGKILL after a bounded wait); every HTTP call has a
timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import cli_env

START_TIMEOUT_S = 180
URL_LINE = re.compile(r"^serving \S+ on (http://127\.0\.0\.1:\d+) ")
API_KEY = "test-key-0123"


class ServerProcess:
    def __init__(self, launch_dir: Path, *overrides: str, env: dict | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "ascend_lab.run", "task=serve", "serve.port=0", *overrides],
                                     cwd=launch_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", env=env or cli_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = URL_LINE.match(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.lines[-40:]))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit status (SIGKILL if it does not come)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the server did not stop within its drain time:\n" + self.output[-3000:])
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def call(url: str, path: str, body=None, key: str | None = API_KEY, raw: bytes | None = None,
         timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request (POST when a body is given)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode("utf-8")), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode("utf-8")), dict(exc.headers)


def stream(url: str, path: str, body: dict, key: str | None = API_KEY, timeout: float = 60) -> list[bytes]:
    """The raw ``data:`` payloads of a streamed response, as bytes (nothing decoded yet)."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    events = []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response:
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):].rstrip(b"\n"))
    return events


def stream_text(events: list[bytes], chat: bool) -> tuple[list[str], list[dict]]:
    """(text pieces, parsed chunks) of a stream; every payload must be strict UTF-8 JSON, the last [DONE]."""
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e.decode("utf-8", errors="strict")) for e in events[:-1]]
    pieces = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            pieces.append(choice["delta"].get("content", "") if chat else choice["text"])
    return pieces, chunks
