"""A WSGI app served on a loopback port of its own, in a thread: a peer or service a test stands up."""
from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(app: Any) -> Iterator[str]:
    """Serve `app` until the generator is closed; yields its base URL (`yield from` it in a fixture)."""
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


serving = contextmanager(serve)
"""`with serving(app) as url:` the same, as a context manager (several apps: an `ExitStack`)."""


def soap_relay(wsdl_url: str, rewrite: Callable[[bytes], bytes],
               rewrite_request: Callable[[bytes], bytes] = lambda body: body) -> Any:
    """A WSGI app relaying a real SOAP service: its WSDL pointed at the relay, each request passed through
    `rewrite_request` and each answer through `rewrite` (a peer that sends what the real one would, altered:
    serve it with `serve`/`serving`)."""
    import requests

    wsdl = requests.get(wsdl_url, timeout=5).content
    real = wsdl_url.split("?")[0].rstrip("/")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        own = f"http://127.0.0.1:{environ['SERVER_PORT']}".encode()
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "text/xml")])
            return [wsdl.replace(real.encode(), own)]
        body = rewrite_request(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        answer = requests.post(real + "/", data=body, timeout=10,
                               headers={"Content-Type": environ.get("CONTENT_TYPE", "text/xml"),
                                        "SOAPAction": environ.get("HTTP_SOAPACTION", "")})
        start_response(f"{answer.status_code} X", [("Content-Type", "text/xml")])
        return [rewrite(answer.content)]

    return app
