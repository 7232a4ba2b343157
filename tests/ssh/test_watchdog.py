"""The idle watchdog (remote/watchdog.py) on a real host: the loopback sshd stands in for the lab
host, and every activity is made for real (an SSH session, a tunnel carrying traffic, Predict calls,
a lab step, a keep-alive). Policies are seconds long; the watchdog checks twice a second."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REMOTE, cheap_to_repeat, tflab, wait_until
from tests.sshd import Sshd
from tflab import ports
from tflab.client import ServingClient
from tflab.sshhost import identity_record

pytestmark = pytest.mark.slow
IDLE = 4.0  # seconds without activity before the watchdog acts
TOKEN = "5e" * 32  # a lab's peers token


def record_identity(pid: int, argv: list[str], path: Path) -> None:
    """What identifies a service, recorded by the shell tflab runs on the host as it starts one."""
    subprocess.run(["sh", "-c", identity_record(str(pid), argv, str(path))], check=True, timeout=30)
    assert json.loads(path.read_text())["pid"] == pid


@pytest.fixture(scope="module")
@cheap_to_repeat
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("watchdog-sshd"), ports.free_port()).start()
    yield server
    server.stop()


class Lab:
    """A lab folder on the host with one service (a sleeper) and its watchdog running."""

    def __init__(self, sshd: Sshd, root: Path, lab_ports: dict | None = None, action: str = "stop-services",
                 env: dict | None = None, extra: tuple[str, ...] = ()):
        self.sshd, self.workdir = sshd, root / "lab"
        shutil.copytree(REMOTE, self.workdir / "remote", ignore=shutil.ignore_patterns("__pycache__"))
        services = self.workdir / "services"
        services.mkdir(parents=True)
        (services / "ports.json").write_text(json.dumps(lab_ports or {}))
        self.sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
        (services / "sleeper.pid").write_text(str(self.sleeper.pid))
        record_identity(self.sleeper.pid, ["sleep", "600"], services / "sleeper.id")  # as run-lab records it
        self.cli("set", "--idle", str(IDLE))
        self.proc = subprocess.Popen([sys.executable, str(self.workdir / "remote" / "watchdog.py"), "run",
                                      "--workdir", str(self.workdir), "--action", action, "--ssh-port",
                                      str(sshd.port), "--interval", "0.5", "--min-age", "2", "--warn", "2", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        wait_until(lambda: self.view().get("checked_at"), 20, what="the watchdog's first check")

    def cli(self, *args: str) -> dict:
        out = subprocess.run([sys.executable, str(self.workdir / "remote" / "watchdog.py"), *args, "--workdir",
                              str(self.workdir)], capture_output=True, text=True, timeout=30, check=True).stdout
        return json.loads(out)

    def view(self) -> dict:
        try:
            return json.loads((self.workdir / "autostop" / "view.json").read_text())
        except (OSError, ValueError):
            return {}

    def host_args(self, tmp: Path) -> list[str]:
        return ["--host", f"{self.sshd.user}@127.0.0.1:{self.sshd.port}", "--identity", str(self.sshd.user_key),
                "--known-hosts", str(tmp / "known_hosts"), "--accept-new-host-key"]

    def stays_alive_while(self, activity, seconds: float, source: str) -> None:
        """Run activity() for seconds (> IDLE): the watchdog must not act, and must see source active."""
        seen = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            activity()
            seen.update(self.view().get("active", []))
            assert not self.view().get("acted"), self.view()
        assert source in seen, (source, seen, self.view().get("sources"))

    def acts(self) -> dict:
        """Once the activity has stopped, the watchdog acts: it stops the lab's services, then ends."""
        wait_until(lambda: self.proc.poll() is not None, IDLE + 20, what="the watchdog to act")
        view = self.view()
        assert view["acted"]["what"] == "stop-services" and f"idle for {IDLE:g} s" in view["acted"]["why"]
        self.sleeper.wait(10)  # the lab's service was stopped
        return view

    def close(self) -> None:
        for proc in (self.proc, self.sleeper):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def lab(sshd, tmp_path):
    made = []

    def make(lab_ports=None, **kwargs) -> Lab:
        made.append(Lab(sshd, tmp_path, lab_ports, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_an_idle_lab_is_acted_on_and_tflab_autostop_queries_do_not_count(lab, tmp_path):
    idle = lab()
    seen = []
    for _ in range(3):  # tflab's own queries, over SSH, while the clock runs
        proc = tflab("autostop", *idle.host_args(tmp_path), "--workdir", str(idle.workdir), "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        view = json.loads(proc.stdout)
        assert view["policy"]["idle_seconds"] == IDLE and view["action"] == "stop-services"
        assert "ssh" not in view["active"]
        seen.append(view["idle_seconds"])
        if idle.proc.poll() is not None:
            break
    assert seen == sorted(seen) and seen[-1] > seen[0]  # the idle clock kept running through them
    view = idle.acts()
    assert view["sources"]["ssh"]["active"] is False


def test_an_ssh_session_at_work_keeps_the_lab(lab, tmp_path):
    busy = lab()
    command = "for i in $(seq 12); do head -c 30000 /dev/zero | tr '\\0' a; echo; sleep 0.4; done"
    session = subprocess.Popen([sys.executable, "-m", "tflab", "ssh", *busy.host_args(tmp_path), "--", "sh", "-c",
                                command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        busy.stays_alive_while(lambda: time.sleep(0.2), IDLE + 2, "ssh")
    finally:
        session.wait(60)
    busy.acts()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_a_tunnel_carrying_traffic_keeps_the_lab(lab, tmp_path):
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    local = ports.free_port()
    busy = lab()
    tunnel = subprocess.Popen([sys.executable, "-m", "tflab", "tunnel", *busy.host_args(tmp_path), "--no-lab-ports",
                               "--forward", f"{local}:{echo.server_address[1]}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: not ports.is_free(local), 30, what="the tunnel")

        def traffic():
            with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
                s.sendall(b"x" * 20000)
                got = 0
                while got < 20000:
                    got += len(s.recv(65536))
            time.sleep(0.3)

        busy.stays_alive_while(traffic, IDLE + 2, "ssh")
        view = busy.view()  # an open tunnel that carries nothing is not activity
    finally:
        tunnel.send_signal(signal.SIGTERM)
        tunnel.wait(30)
        echo.shutdown()
    assert view["idle_seconds"] < IDLE
    busy.acts()


def test_predict_calls_keep_the_lab(lab, lab_steps_run):
    workdir, _, _ = lab_steps_run
    grpc = ports.free_port()
    server = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={grpc}", "--model_name=nn",
                               f"--model_base_path={workdir / 'models' / 'nn'}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ServingClient(f"127.0.0.1:{grpc}", timeout=10) as client:
            client.wait_available("nn", timeout=120)
            busy = lab({"serving": grpc})
            busy.stays_alive_while(lambda: (client.predict([1.0, 2.0]), time.sleep(0.3)), IDLE + 2, "serving")
    finally:
        server.terminate()
        server.wait(30)
    busy.acts()


def test_a_lab_step_running_and_a_keep_alive_keep_the_lab(lab):
    busy = lab()
    step = subprocess.Popen([sys.executable, str(busy.workdir / "remote" / "steps.py"), "--workdir", str(busy.workdir),
                             "--steps", "5000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        busy.stays_alive_while(lambda: time.sleep(0.3), IDLE + 2, "step")
    finally:
        step.kill()
        step.wait(30)
    view = busy.cli("set", "--keep", "3")  # a keep-alive for 3 s from now
    assert view["policy"]["keep_until"] > view["now"]
    busy.stays_alive_while(lambda: time.sleep(0.3), 2.5, "keep")
    busy.acts()


def test_on_a_lab_made_by_up_the_watchdog_shuts_the_machine_down(lab, tmp_path):
    """The shutdown command is replaced here (this machine stays up); the instance's own
    InstanceInitiatedShutdownBehavior, set at launch, turns it into a stop or a terminate."""
    shut = tmp_path / "shutdown-ran"
    up_lab = lab(action="shutdown", env={"TFLAB_WATCHDOG_SHUTDOWN": f"touch {shut}"})
    wait_until(lambda: shut.exists(), IDLE + 20, what="the shutdown command")
    view = up_lab.view()
    assert view["acted"]["what"] == "shutdown" and view["action"] == "shutdown"
    assert up_lab.sleeper.poll() is None  # the machine goes down as a whole: services are not stopped one by one


def test_a_jupyter_kernel_running_a_loop_keeps_the_lab_and_an_idle_one_does_not(lab, tmp_path):
    """JupyterLab as run-lab starts it (127.0.0.1, the lab's token file); a kernel is made through its
    REST API and runs a loop through the kernel's own channels (jupyter_client), as a notebook cell does."""
    import urllib.request

    from jupyter_client import BlockingKernelClient

    port = ports.free_port()
    root, runtime = tmp_path / "notebooks", tmp_path / "runtime"
    root.mkdir()
    token = "t" * 48
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                               "--ip=127.0.0.1", f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root}"],
                              env={**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(runtime)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def call(path: str, method: str = "GET"):
        request = urllib.request.Request(f"{api}{path}?token={token}", method=method, data=b"{}" if method == "POST"
                                         else None, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    client = None
    try:
        wait_until(lambda: _answers(call), 60, interval=0.2, what="JupyterLab")
        kernel = call("/kernels", "POST")
        connection = runtime / f"kernel-{kernel['id']}.json"
        wait_until(connection.exists, 30, what="the kernel's connection file")
        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels(hb=False)  # a heartbeat missed under load is not what this tests
        client.wait_for_ready(timeout=60)
        client.execute("import time\nwhile True:\n    time.sleep(0.1)")
        wait_until(lambda: call(f"/kernels/{kernel['id']}")["execution_state"] == "busy", 60, interval=0.2,
                   what="the cell to run")
        busy = lab({"jupyter": port})  # the lab's watchdog starts once the cell runs
        (busy.workdir / "jupyter-token").write_text(token)
        busy.stays_alive_while(lambda: time.sleep(0.3), IDLE + 2, "jupyter")
        call(f"/kernels/{kernel['id']}/interrupt", "POST")  # the cell stops; the kernel stays, idle
        wait_until(lambda: call("/kernels")[0]["execution_state"] == "idle", 30, what="the kernel to be idle")
        # An open tab polls the idle kernel through the SSH tunnel: neither Jupyter nor the SSH
        # connection that carries the polls counts it as activity.
        local = ports.free_port()
        tunnel = subprocess.Popen([sys.executable, "-m", "tflab", "tunnel", *busy.host_args(tmp_path),
                                   "--no-lab-ports", "--forward", f"{local}:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api = f"http://127.0.0.1:{local}/api"
        wait_until(lambda: _answers(call), 30, interval=0.2, what="Jupyter through the tunnel")
        deadline = time.monotonic() + IDLE + 20
        while busy.proc.poll() is None and time.monotonic() < deadline:
            call("/kernels")
            call("/sessions")
            call("/terminals")
            time.sleep(0.5)
        busy.acts()
    finally:
        if client is not None:
            client.stop_channels()
        if "tunnel" in locals():
            tunnel.send_signal(signal.SIGTERM)
            tunnel.wait(30)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _answers(call) -> bool:
    try:
        call("/status")
        return True
    except OSError:
        return False


def test_the_nodes_of_a_lab_of_several_stop_as_one(sshd, tmp_path):
    """`up --nodes N`: each node's watchdog asks the others (autostop/peers.json); a node idle on its own
    is kept while another is active, and once none is, both act (idle nodes do not keep each other up)."""
    listen = {name: ports.free_port() for name in "ab"}
    nodes = {name: Lab(sshd, tmp_path / name, extra=("--peer-port", str(listen[name]), "--peer-bind", "127.0.0.1"))
             for name in "ab"}
    try:
        for name, other in (("a", "b"), ("b", "a")):  # as `up` and run-lab write it (autostop.peers_command)
            (nodes[name].workdir / "autostop" / "peers.json").write_text(
                json.dumps({"token": TOKEN, "peers": [f"127.0.0.1:{listen[other]}"]}))
        nodes["a"].cli("set", "--keep", str(IDLE * 2.5))  # node a is active on its own
        nodes["b"].stays_alive_while(lambda: time.sleep(0.2), IDLE * 2, "peers")
        assert "127.0.0.1:%d: keep" % listen["a"] in nodes["b"].view()["sources"]["peers"]["detail"]
        assert "peers" not in nodes["a"].view()["active"]  # b, idle on its own, does not keep a
        for node in nodes.values():  # a's keep-alive ends: neither keeps the other
            node.acts()
    finally:
        for node in nodes.values():
            node.close()


@pytest.mark.parametrize("answer, pace", [(b"[]", 0), (b'{"active": "keep"}', 0), (b'{"active": ["peers", "x"]}', 0),
                                          (b"x" * 10000, 0), (b'{"active": ["keep"]}', 0.5), (b'{"active": ["keep"]}', 0),
                                          (b'{"active": ["keep"], "mac": "' + b"0" * 64 + b'"}', 0),
                                          (b"[" * 100000, 0)])
def test_a_stranger_on_the_peer_port_is_no_activity_and_never_holds_a_check(answer, pace):
    """What answers on a node's peer port is read for 2 s and 4 KB at most; anything but a watchdog's answer
    signed with the lab's token over the question's nonce (or "peers" passed on) counts as no activity, so a
    stranger can neither keep a lab up nor hang its watchdog."""
    sys.path.insert(0, str(REMOTE))
    import watchdog

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve():
            conn, _ = listener.accept()
            with conn:
                try:
                    for byte in answer:  # byte by byte, pace seconds apart: a trickle
                        conn.sendall(bytes([byte]))
                        time.sleep(pace)
                except OSError:  # the watchdog hung up
                    pass

        threading.Thread(target=serve, daemon=True).start()
        try:  # a trickle is cut at 2 s: its "keep" never arrives whole
            active = watchdog.ask_peer(f"127.0.0.1:{listener.getsockname()[1]}", 0, TOKEN, timeout=2.0)
        except (OSError, ValueError):
            active = []
    assert active == [], active
