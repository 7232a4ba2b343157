"""Which local ports count as free: what tunnels and services can bind."""

from __future__ import annotations

import socket

from tflab import ports


def test_a_listening_port_is_taken_and_choose_moves_off_it():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not ports.is_free(port)
        assert ports.choose({"x": port})["x"] != port
    assert ports.is_free(port)


def test_a_port_whose_closed_connections_wait_in_time_wait_is_free():
    # The server side closes first (as ssh does when a tunnel stops): its port keeps TIME_WAIT entries
    # for a minute, yet the next tunnel can bind it (SO_REUSEADDR): it must not move off it.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # active close on the server side: TIME_WAIT on 127.0.0.1:port
        client.recv(1)
        client.close()
    with socket.socket() as plain:  # what the check used to do
        try:
            plain.bind(("127.0.0.1", port))
            plain_free = True
        except OSError:
            plain_free = False
    assert not plain_free  # the situation is real
    assert ports.is_free(port) and ports.choose({"x": port}) == {"x": port}
