"""bench/serve.py's load generator: only answered (200) requests are throughput."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Failing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"detail": "down"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_failed_answers_are_reported_apart_and_not_counted_as_throughput():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = asyncio.run(bench.load(f"http://127.0.0.1:{server.server_port}", "/predict", 2, 0.5))
    finally:
        server.shutdown()
        server.server_close()
    assert result["failed"] > 0 and result["failures"][0] == "503"
    assert result["requests"] == 0 and result["rps"] == 0.0
