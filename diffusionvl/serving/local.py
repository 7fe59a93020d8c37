"""A server on a free localhost port, in a background thread: for tests, the load benchmark and the screenshot."""

import socket
import threading
import time
from contextlib import contextmanager


@contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Run `app` with uvicorn until the block ends; yields its base URL (http://host:port)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="diffusionvl-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
