"""Running the service: uvicorn (uvloop, httptools) on loopback unless told otherwise, one worker process.

One process: the user tower and the matrix product are short and numpy / ONNX Runtime release the GIL for
them; a second process would hold a second copy of the model and of the hot cache. Scale out with more
processes behind a load balancer, each with its own port.
"""
import logging
import sys

import uvicorn

from serving.service.app import ServiceConfig, create_app

LOOPBACK = "127.0.0.1"


def configure_logging(access_log: str | None) -> None:
    """Service events to stderr; access lines (JSON) to `access_log` ("-": stdout; None: off)."""
    events = logging.getLogger("prerank.service")
    events.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    events.addHandler(handler)
    access = logging.getLogger("prerank.access")
    access.propagate = False
    if access_log is None:
        access.setLevel(logging.WARNING)
        return
    access.setLevel(logging.INFO)
    out = logging.StreamHandler(sys.stdout) if access_log == "-" else logging.FileHandler(access_log)
    out.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(out)


def serve(config: ServiceConfig, host: str = LOOPBACK, port: int = 8500, access_log: str | None = "-") -> None:
    """Serve until interrupted (SIGINT / SIGTERM end it cleanly)."""
    configure_logging(access_log)
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning",
                timeout_graceful_shutdown=5)
