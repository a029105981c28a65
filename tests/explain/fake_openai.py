"""An OpenAI-compatible chat-completions server for tests (stdlib ``http.server`` in a thread).

It speaks the real protocol (``POST /v1/chat/completions``, ``choices[0].message.content``,
``choices[0].logprobs.content[*].top_logprobs``), records every request body, answers through
a function of the request, and can fail: the first ``fail_first`` calls with the listed
statuses, and any call for which ``fail_when(body)`` returns a status.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: probability the server gives the digit it answers (the other digit gets the rest)
CONFIDENCE = 0.9


def logprob_content(text: str) -> list[dict[str, Any]]:
    """``text`` cut into tokens (a non-space character with the spaces before it), each with
    top log-probabilities: a digit 0/1 gets :data:`CONFIDENCE`, the other digit the rest."""
    out = []
    for tok in re.findall(r"\s*\S", text):
        digit = tok.strip()
        if digit in ("0", "1"):
            other = tok.replace(digit, "1" if digit == "0" else "0")
            top = [(tok, math.log(CONFIDENCE)), (other, math.log(1 - CONFIDENCE))]
        else:
            top = [(tok, 0.0)]
        out.append(
            {
                "token": tok,
                "logprob": top[0][1],
                "bytes": list(tok.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top
                ],
            }
        )
    return out


class FakeOpenAI:
    """Start with ``with FakeOpenAI(answer) as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], str],
        *,
        fail_first: list[int] | None = None,
        fail_when: Callable[[dict[str, Any]], int | None] | None = None,
    ) -> None:
        self.answer = answer
        self.fail_first = list(fail_first or [])
        self.fail_when = fail_when
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.handle(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
            status = self.fail_first.pop(0) if self.fail_first else None
        if status is None and self.fail_when is not None:
            status = self.fail_when(body)
        if path != "/v1/chat/completions":
            status = 404
        if status is not None:
            with self.lock:
                self.statuses.append(status)
            error = {"message": f"scripted failure {status}", "type": "test", "code": status}
            return status, {"error": error}
        text = self.answer(body)
        with self.lock:
            self.statuses.append(200)
        logprobs = {"content": logprob_content(text)} if body.get("logprobs") else None
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
