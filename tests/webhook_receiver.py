"""A test receiver for what metering POSTs (CloudEvents batches, budget alerts), run as its own process so
a test can SIGKILL it: each request's headers and body are appended to a JSON-lines file and fsynced
before the answer, so whatever it answered 2xx to is on disk. --refuse answers 400 to everything;
--slow N keeps the first N requests waiting past the sender's timeout (then answers 200)."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--refuse", action="store_true")
    parser.add_argument("--slow", type=int, default=0)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    args = parser.parse_args()
    seen = {"requests": 0}
    writing = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, b"ok")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            seen["requests"] += 1
            if seen["requests"] <= args.slow:
                time.sleep(args.slow_seconds)
            if args.refuse:
                self._answer(400, b'{"error": "this receiver takes nothing"}')
                return
            line = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()})
            with writing, args.log.open("a") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
            self._answer(200, b"{}")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
