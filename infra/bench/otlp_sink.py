#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver that accepts and drops everything: what a
collector costs the host, without a collector's own CPU in the measurement.

    infra/bench/otlp_sink.py [port]      (default 4318)

Then start the host with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>.
Prints the requests and bytes received when stopped (Ctrl-C).
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        received["requests"] += 1
        received["bytes"] += length
        # An empty ExportTraceServiceResponse: every span accepted.
        self.send_response(200)
        self.send_header("Content-Type", self.headers.get("Content-Type", "application/x-protobuf"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 4318
server = ThreadingHTTPServer(("127.0.0.1", port), Sink)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
print(f"otlp sink: {received['requests']} export requests, {received['bytes']} bytes", file=sys.stderr)
