"""Remote backend for a SandboxFusion-compatible HTTP API, and a minimal such server.

Client: ``POST {url}/run_code`` with ``{"code", "language": "python", "run_timeout",
"stdin", "memory_limit_MB"}``; the answer is ``{"status", "run_result": {"status",
"stdout", "stderr", "return_code"}}``. Stdin tests send the program as is. Function tests
send the harness with the program and requests embedded; result frames come back as
stdout lines prefixed by a per-run token. The program could print such lines itself, but
they carry only values, and values are judged on the trusted side, so that forges nothing.
Per-call timeouts are not enforced separately here: one ``run_timeout`` bounds the batch.

Server: ``serve(backend)`` answers the same API by running code through a local backend
(bwrap); used by the tests and usable as a tiny self-hosted executor.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .sandbox import HARNESS_SRC, Backend, Job, Limits, RunResult
from .sandbox.process import loads_bounded


class RemoteBackend(Backend):
    name = "remote"

    def __init__(self, url: str, limits: Limits, http_timeout_s: float = 60.0) -> None:
        super().__init__(limits, "python", None)
        self.url = url.rstrip("/") + "/run_code"
        self.http_timeout_s = http_timeout_s

    def _post(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return loads_bounded(resp.read(self.limits.result_bytes + (1 << 20)))

    def _run(self, job: Job, uid: int | None) -> RunResult:
        t0 = time.monotonic()
        left = job.deadline - t0
        if job.mode == "stdin":
            code, stdin, token = job.program, job.stdin.decode(errors="replace"), None
            budget = min(job.step_timeout_s, left)
        else:
            token = "@@srpo-" + secrets.token_hex(8) + "@@"
            msg = {"mode": "calls", "program": job.program, "requests": job.requests}
            code = (
                HARNESS_SRC + f"\nremote_main({json.dumps(json.dumps(msg))}, {json.dumps(token)})\n"
            )
            stdin = ""
            budget = min(job.step_timeout_s * (len(job.requests) + 1), left)
        payload = {
            "code": code,
            "language": "python",
            "run_timeout": max(budget, 0.1),
            "stdin": stdin,
            "memory_limit_MB": self.limits.memory_bytes >> 20,
        }
        try:
            ans = self._post(payload, timeout=budget + self.http_timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as e:
            return RunResult([], b"", b"", None, error=f"remote sandbox: {e}")
        run = ans.get("run_result") or {}
        if ans.get("status") == "SandboxError" or not isinstance(run, dict):
            return RunResult([], b"", b"", None, error=f"remote sandbox: {ans.get('message')}")
        stdout = str(run.get("stdout") or "")
        result = RunResult(
            [{"started": True}],
            stdout.encode(),
            str(run.get("stderr") or "").encode(),
            run.get("return_code"),
            timed_out=run.get("status") == "TimeLimitExceeded",
            wall_s=time.monotonic() - t0,
        )
        if token is not None:
            result.frames = []
            for line in stdout.split("\n"):
                if line.startswith(token):
                    try:
                        fr = loads_bounded(line[len(token) :])
                    except ValueError:
                        continue
                    if isinstance(fr, dict):
                        result.frames.append(fr)
        return result


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start a SandboxFusion-compatible ``/run_code`` server in a thread; returns it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/run_code":
                self.send_error(404)
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(n))
                timeout = float(req.get("run_timeout", 10))
                res = backend.run(
                    Job(
                        "stdin",
                        str(req["code"]),
                        stdin=str(req.get("stdin") or "").encode(),
                        step_timeout_s=timeout,
                        deadline=time.monotonic() + timeout + 10,
                    )
                )
                status = "TimeLimitExceeded" if res.timed_out else "Finished"
                body = {
                    "status": "Success" if res.returncode == 0 else "Failed",
                    "message": res.error or "",
                    "run_result": {
                        "status": status,
                        "execution_time": res.wall_s,
                        "return_code": res.returncode,
                        "stdout": res.stdout.decode(errors="replace"),
                        "stderr": res.stderr.decode(errors="replace"),
                    },
                }
                if res.error or not res.started:
                    body = {
                        "status": "SandboxError",
                        "message": res.error or "",
                        "run_result": None,
                    }
            except Exception as e:  # malformed request
                body = {"status": "SandboxError", "message": repr(e), "run_result": None}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
