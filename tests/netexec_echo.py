"""A stand-in for agnhost netexec's HTTP server, for the network-namespace smoke tests.

Only what the smoke test uses, with netexec's behaviour (kubernetes/kubernetes
test/images/agnhost/netexec/netexec.go, commit 04791b49): /echo writes back the form value
`msg` (Go's r.FormValue: the query string or a url-encoded POST body), /healthz answers 200.
Run as `python3 netexec_echo.py PORT` inside a pod's network namespace.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    def _form(self) -> dict[str, list[str]]:
        """Body values first, then the query's (Go's Request.FormValue order)."""
        form: dict[str, list[str]] = {}
        length = int(self.headers.get("Content-Length") or 0)
        if length and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs(self.rfile.read(length).decode())
        for key, values in parse_qs(urlsplit(self.path).query).items():
            form.setdefault(key, []).extend(values)
        return form

    def _answer(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            body = b""
        elif path == "/echo":
            body = self._form().get("msg", [""])[0].encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
