"""The host's services/ports.json (run-lab's record of the ports its services chose) as a damaged disk or a
hostile host leaves it: tunnel and ssh-config read it bounded on the host (head -c, a regular file only),
checked for depth, and a damaged one is one warning line and the lab's own ports, never a traceback or a
read without end (review of issue 22 item 2 / issue 23 item 4)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from tflab.ssh import Connection
from tflab.tunnels import PORTS_FILE_LIMIT, host_ports


def ports_file(tmp_path, content: str | None = None, link: str | None = None):
    workdir = tmp_path / "workdir"
    (workdir / "services").mkdir(parents=True)
    path = workdir / "services" / "ports.json"
    if link:
        os.symlink(link, path)
    else:
        path.write_text(content)
    os.chmod(tmp_path, 0o755)
    return str(workdir)


@pytest.mark.parametrize("content, said", [
    ("[" * 30_000 + "]" * 30_000, "nested deeper than 4"),  # within 64 KB: was a RecursionError traceback
    ('{"jupyter": 18888, "pad": "' + "x" * (2 * PORTS_FILE_LIMIT) + '"}', f"more than {PORTS_FILE_LIMIT} bytes"),
    ("{not json", "not JSON"),
], ids=["nested", "too large", "not JSON"])  # the contents as ids made an environment too large for a child
def test_a_damaged_ports_file_is_one_line_and_the_labs_own_ports(target, tmp_path, caplog, content, said):
    workdir = ports_file(tmp_path, content)
    with caplog.at_level(logging.WARNING, logger="tflab.tunnels"), Connection(target) as connection:
        assert host_ports(connection, workdir) == {}
    lines = [r.getMessage() for r in caplog.records if r.name == "tflab.tunnels"]
    assert len(lines) == 1 and "ports.json on the host is damaged" in lines[0] and said in lines[0]
    assert "\n" not in lines[0] and len(lines[0]) < 300


def test_a_ports_file_linked_to_dev_zero_is_not_read(target, tmp_path):
    workdir = ports_file(tmp_path, link="/dev/zero")  # `cat` read it until the memory ran out
    with Connection(target) as connection:
        assert host_ports(connection, workdir) == {}


def test_a_sound_ports_file_still_moves_the_forwards(target, tmp_path):
    workdir = ports_file(tmp_path, json.dumps({"serving": 19000, "jupyter": 18888, "unknown": 1}))
    with Connection(target) as connection:
        assert host_ports(connection, workdir) == {"serving": 19000, "jupyter": 18888}
