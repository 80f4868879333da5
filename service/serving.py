"""How `mailgate serve` runs the app: uvicorn with the httptools parser on uvloop.

uvicorn stays the server (rather than, say, a Rust ASGI server) because
mode=remove needs the client connection's transport and socket, which
uvicorn's protocols expose; httptools and uvloop are its fast C parser and
event loop. The protocol is uvicorn's httptools one answering unreadable HTTP in
problem+json (:mod:`service.api.httpserver`). The live-server test fixture uses
these same options.
"""

from __future__ import annotations

from typing import Any, Final

LOOP: Final = "uvloop"


def uvicorn_options() -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` shared by every server
    the project starts: the HTTP protocol, the event loop, and the header policy."""
    from service.api.httpserver import ProblemHttpToolsProtocol

    return {
        "http": ProblemHttpToolsProtocol,
        "loop": LOOP,
        "proxy_headers": True,
        "server_header": False,
    }


def new_event_loop() -> Any:
    """A new event loop of the kind `mailgate serve` runs on (uvloop)."""
    import uvloop

    return uvloop.new_event_loop()
