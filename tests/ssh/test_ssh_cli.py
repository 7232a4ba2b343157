"""`tflab ssh`, `tflab tunnel` and `tflab ssh-config` as a user runs them, against a real sshd."""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import subprocess
import sys
import threading

import pytest

from tests.conftest import tflab, wait_until
from tests.sshd import Sshd
from tflab import ports
from tflab.state import LabState, StateStore


def host_args(sshd, tmp_path, *extra):
    return ["--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
            "--known-hosts", str(tmp_path / "known_hosts"), *extra]


def test_ssh_host_runs_a_command_and_exits_with_its_status(sshd, tmp_path):
    refused = tflab("ssh", *host_args(sshd, tmp_path), "--", "echo", "hi")
    kind, fp = sshd.host_fingerprint
    assert refused.returncode == 9 and f"is not known: {kind} {fp}" in refused.stderr  # its own code
    assert "--accept-new-host-key" in refused.stderr and "Traceback" not in refused.stderr

    proc = tflab("ssh", *host_args(sshd, tmp_path, "--accept-new-host-key"), "--", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n" and "trusted on first use" in proc.stderr
    status = tflab("ssh", *host_args(sshd, tmp_path), "--", "sh", "-c", "echo to-err >&2; exit 7")
    assert status.returncode == 7 and status.stderr.strip() == "to-err"


def test_ssh_to_a_lab_uses_its_key_and_pinned_fingerprint(sshd, tmp_path):
    home = tmp_path / "home"
    store = StateStore(home)
    kind, fp = sshd.host_fingerprint
    store.save(LabState(name="pinned", region="us-west-2", instance_id=None, ssh_host="127.0.0.1",
                        ssh_port=sshd.port, ssh_user=sshd.user, key_path=str(sshd.user_key),
                        host_key_fingerprints={kind: fp}))
    env = {"TFLAB_HOME": str(home)}
    proc = tflab("ssh", "--name", "pinned", "--", "echo", "lab", env=env)
    assert proc.returncode == 0 and proc.stdout == "lab\n", proc.stderr
    assert store.known_hosts_path("pinned").exists()
    config = tflab("ssh-config", "--name", "pinned", env=env)
    assert config.returncode == 0
    for line in ("Host tflab-pinned", "HostName 127.0.0.1", f"Port {sshd.port}", f"IdentityFile {sshd.user_key}",
                 f"UserKnownHostsFile {store.known_hosts_path('pinned')}", "StrictHostKeyChecking yes",
                 "LocalForward 127.0.0.1:8000 127.0.0.1:8888"):
        assert line in config.stdout
    # The block works with OpenSSH itself.
    (tmp_path / "ssh_config").write_text(config.stdout)
    real = subprocess.run(["ssh", "-F", str(tmp_path / "ssh_config"), "-o", "BatchMode=yes", "tflab-pinned",
                           "echo", "openssh"], capture_output=True, text=True, timeout=30)
    assert real.returncode == 0 and real.stdout == "openssh\n", real.stderr
    missing = tflab("ssh", "--name", "nope", "--", "true", env=env)
    assert missing.returncode == 7 and "no lab named 'nope'" in missing.stderr


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.mark.parametrize("client, says", [("openssh", "forwarding with OpenSSH"), ("paramiko", "forwarding with paramiko")])
def test_tunnel_forwards_until_ctrl_c_and_reconnects_after_a_drop(tmp_path, client, says):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sshd = Sshd(tmp_path / "sshd", ports.free_port()).start()
    local = ports.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tflab", "tunnel", *host_args(sshd, tmp_path, "--accept-new-host-key"),
                             "--no-lab-ports", "--forward", f"{local}:{server.server_address[1]}", "--client", client,
                             "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    events: list[dict] = []
    out_reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout), daemon=True)
    out_reader.start()

    def echo() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
                s.sendall(b"ping")
                return s.recv(4) == b"ping"
        except OSError:
            return False

    try:
        wait_until(lambda: any(says in line for line in lines), 60, what="the tunnel")
        wait_until(lambda: events, 10, what="the --json line")
        forward = f"port {server.server_address[1]}"
        assert events[0] == {"event": "forwarding", "host": f"{sshd.user}@127.0.0.1:{sshd.port}", "client": client,
                             "forwards": {forward: {"local": f"127.0.0.1:{local}", "remote_port": server.server_address[1]}}}
        assert echo()
        sshd.stop()  # the host goes away, sessions and all
        sshd.start()
        wait_until(lambda: any("reconnected" in line for line in lines), 60, what="the reconnect")
        assert any("dropped; reconnecting" in line for line in lines)
        assert echo()
        wait_until(lambda: len(events) == 3, 10, what="the --json lines after the reconnect")
        assert events[1]["event"] == "dropped" and events[2] == events[0]  # the same local port again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(5)
        out_reader.join(5)
        sshd.stop()
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, "".join(lines)
    assert ports.is_free(local)


def test_up_keeps_an_instance_whose_ssh_does_not_answer_and_says_so(tmp_path):
    import io

    from tflab.cloud import wait_ssh
    from tflab.console import Console
    from tflab.errors import UnreachableError

    store = StateStore(tmp_path / "home")
    key = tmp_path / "key"
    key.write_text("not used: nothing answers")
    state = LabState(name="silent", region="us-west-2", ssh_host="127.0.0.1", ssh_port=ports.free_port(),
                     key_path=str(key))
    store.save(state)
    with pytest.raises(UnreachableError) as info:
        wait_ssh(store, state, Console(err=io.StringIO()), timeout=1, accept_new=True)
    assert "the instance runs and is kept" in info.value.message
    assert "`tflab down --name silent` removes it" in info.value.hint
    assert store.load("silent") == state
