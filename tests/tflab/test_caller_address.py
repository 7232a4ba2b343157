"""The address `up` lets SSH in from, when detected: what the address service answers, checked as an IPv4
address (a proxy's page is refused, not put in the security group). A local HTTP server stands in for
checkip.amazonaws.com, on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager

import pytest

from tflab.cloud import CHECKIP_URL, ssh_cidr
from tflab.errors import InputError


@contextmanager
def answering(body: bytes):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_detected_address_is_what_the_service_answers_as_a_32():
    assert CHECKIP_URL == "https://checkip.amazonaws.com"
    with answering(b"198.51.100.23\n") as url:
        assert ssh_cidr(None, url) == "198.51.100.23/32"


@pytest.mark.parametrize("body", [b"<html><body>Please log in to the proxy</body></html>", b"", b"2001:db8::1\n",
                                  b"198.51.100.23/8\n"])
def test_an_answer_that_is_not_an_ipv4_address_is_refused_with_the_option_to_pass(body):
    with answering(body) as url:
        with pytest.raises(InputError) as refused:
            ssh_cidr(None, url)
    assert "not an IPv4 address (a proxy in the way?)" in refused.value.message and url in refused.value.message
    assert "--ssh-cidr" in refused.value.hint


def test_no_answer_at_all_names_the_option_to_pass():
    with answering(b"") as url:
        closed = url
    with pytest.raises(InputError) as refused:
        ssh_cidr(None, closed)
    assert "could not detect this machine's public address" in refused.value.message
    assert "--ssh-cidr" in refused.value.hint
