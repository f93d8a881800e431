"""A local OTLP/HTTP sink: 200 to every POST under /v1/ (traces, metrics, logs), bodies dropped.

`python -m gateway.bench.sink --port P`; `GET /stats` answers how many exports it took in.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OTLP_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")


class _Handler(BaseHTTPRequestHandler):
    server: _Sink
    # Keep-alive, as a collector does: a new connection per export would bill the gateway for it.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path in OTLP_PATHS:
            with self.server.lock:
                self.server.counts[self.path] = self.server.counts.get(self.path, 0) + 1
                self.server.bytes += length
            self._answer(200, b"", "application/x-protobuf")
        else:
            self._answer(404, b"not an OTLP path", "text/plain")

    def do_GET(self) -> None:
        if self.path == "/stats":
            with self.server.lock:
                stats = {"counts": dict(self.server.counts), "bytes": self.server.bytes}
            self._answer(200, json.dumps(stats).encode(), "application/json")
        else:
            self._answer(404, b"", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _Sink(ThreadingHTTPServer):
    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self.lock = threading.Lock()  # one handler thread per connection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with _Sink(args.port) as sink:
        sink.serve_forever()


if __name__ == "__main__":
    main()
