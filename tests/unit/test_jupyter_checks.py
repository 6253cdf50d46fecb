"""The piece of jupyter_checks.py that needs no image: which addresses a port listens on, read
from /proc/net/tcp as the check reads it in the image (the engine test runs the checks whole)."""

from __future__ import annotations

import importlib.util
import socket

from dlenv.config import CHECKS_DIR

spec = importlib.util.spec_from_file_location("jupyter_checks", CHECKS_DIR / "jupyter_checks.py")
jupyter_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jupyter_checks)


def test_a_listening_socket_is_found_with_its_address():
    with socket.socket() as every, socket.socket() as loopback:
        every.bind(("0.0.0.0", 0))
        every.listen()
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        assert jupyter_checks.listening(every.getsockname()[1]) == ["00000000"]
        assert jupyter_checks.listening(loopback.getsockname()[1]) == ["0100007F"]   # 127.0.0.1, little-endian
    with socket.socket() as bound:   # bound, not listening: not a server
        bound.bind(("0.0.0.0", 0))
        assert jupyter_checks.listening(bound.getsockname()[1]) == []
