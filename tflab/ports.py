"""Local ports: check that one is free, or choose free ones, claimed against the other labs on this machine."""

from __future__ import annotations

import socket

# The lab's services: name -> (port on the lab host, local port of the tunnel), as the original lab maps them.
LAB_PORTS = {"serving": (9000, 9000), "rest": (8501, 8501), "tensorboard": (6006, 6006), "jupyter": (8888, 8000)}


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port and a server can bind it now. SO_REUSEADDR, as servers
    (ssh's forwards, sshtunnel's, Python's) set it: closed connections of the port in TIME_WAIT
    do not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose(wanted: dict, taken: set[int] | frozenset[int] = frozenset(), host: str = "127.0.0.1") -> dict:
    """{key: port} for wanted {key: port}: each wanted port (0: any) when it is free, not in taken and not claimed
    by another lab on this machine, else a free one from the system; the ports are claimed for as long as this
    process runs (remote/choose_ports.py: the window between choosing a port and binding it). Raises OSError
    when no port is free."""
    import os

    from tflab.paths import remote_module

    return remote_module("choose_ports").choose(wanted, taken, claimant=os.getpid(), host=host)
