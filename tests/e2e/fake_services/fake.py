"""A stand-in service for supervisor tests: serves GET /healthz on SHINCHOKU_{NAME}_PORT until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(name: str) -> None:
    prefix = f"SHINCHOKU_{name.upper()}_"
    settings = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    # Tests make a service crash on start by creating this file: `{FAKE_FAIL_DIR}/{name}`.
    fail_dir = os.environ.get("FAKE_FAIL_DIR")
    if fail_dir and os.path.exists(os.path.join(fail_dir, name)):
        sys.stderr.write(f"fake {name}: failing on purpose\n")
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"service": name, "pid": os.getpid(), "settings": settings}).encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((settings.get("host", "127.0.0.1"), int(settings["port"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()
