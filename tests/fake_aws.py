"""A fake of the two AWS endpoints the snapshot upload talks to, for tests (run with python3).

    python3 tests/fake_aws.py RECORD_DIR IMDS_ADDRESS:PORT S3_ADDRESS:PORT [S3_STATUS]

IMDSv2 only: the token must be asked for with PUT and sent back on every metadata read, as EC2
does when `http_tokens = required`; a read without it gets 401. The credentials it hands out are
the fixed test values below. S3 accepts any PUT (answering S3_STATUS, 200 by default) and records
it in RECORD_DIR as <n>.json (method, path, headers) and <n>.body.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN = "imds-session-token-0123"
ROLE = "kube-ec2-test-etcd-snapshots-writer"
CREDENTIALS = {
    "Code": "Success",
    "Type": "AWS-HMAC",
    "AccessKeyId": "ASIATESTACCESSKEY000",
    "SecretAccessKey": "test/Secret+Access/Key0000000000000000000",
    "Token": "FwoGZXIvYXdzEXAMPLESESSIONTOKEN/with+slashes=",
    "Expiration": "2099-01-01T00:00:00Z",
}


class Imds(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, TOKEN)
        else:
            self._send(400, "bad token request")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._send(401, "")
        elif self.path == "/latest/meta-data/iam/security-credentials/":
            self._send(200, ROLE)
        elif self.path == f"/latest/meta-data/iam/security-credentials/{ROLE}":
            self._send(200, json.dumps(CREDENTIALS))
        else:
            self._send(404, "")

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def s3_handler(record: Path, status: int) -> type[BaseHTTPRequestHandler]:
    class S3(Imds):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            n = len(list(record.glob("*.json")))
            (record / f"{n}.body").write_bytes(body)
            (record / f"{n}.json").write_text(json.dumps({"method": "PUT", "path": self.path, "headers": dict(self.headers.items())}))
            self._send(status, "" if status == 200 else "<Error><Code>AccessDenied</Code></Error>")

    return S3


def serve(address: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    host, port = address.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    record_dir = Path(sys.argv[1])
    serve(sys.argv[2], Imds)
    serve(sys.argv[3], s3_handler(record_dir, int(sys.argv[4]) if len(sys.argv) > 4 else 200))
    (record_dir / "ready").write_text("")
    threading.Event().wait()
