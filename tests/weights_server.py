"""A loopback (127.0.0.1) HTTP server for the weights tests: a mirror of files, failure modes, and enough of the
Hugging Face hub's ``/<repo>/resolve/<revision>/<file>`` protocol for ``huggingface_hub`` (HF_ENDPOINT).

Every request is counted, so a test can assert how many downloads happened (and that nothing else was asked).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from typing import Dict, List, Optional, Tuple

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer:
    """``with WeightsServer() as s: s.files["/a.pth"] = data; url = s.url``.

    Attributes:
      files: path -> bytes served with GET (and HEAD).
      truncate: paths whose body stops halfway (Content-Length says the full size, then the socket closes).
      delay: seconds to wait before sending a body (lets concurrent clients overlap).
      requests: ``(method, path)`` of every request received.
    """

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.truncate: set = set()
        self.delay = 0.0
        self.requests: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self, body_wanted: bool) -> None:
                with server._lock:
                    server.requests.append((self.command, self.path))
                path = self.path.split("?", 1)[0]
                data = server.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                if "/resolve/" in path:  # hub protocol: commit and etag (sha256 of an LFS file)
                    self.send_header("X-Repo-Commit", HUB_COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if not body_wanted:
                    return
                if server.delay:
                    time.sleep(server.delay)
                if path in server.truncate:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._serve(True)

            def do_HEAD(self):  # noqa: N802
                self._serve(False)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def count(self, path: str, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.split("?", 1)[0] == path)

    def __enter__(self) -> "WeightsServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
