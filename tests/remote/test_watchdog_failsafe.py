"""The idle watchdog (remote/watchdog.py) fails safe, tried as a careless or hostile user, a damaged disk
or a stranger would: it never signals a process it cannot prove is the lab's service, and no damaged file
(nested 100,000 deep, a FIFO, /dev/zero, a folder, 10 MB, 1e300, Infinity, NaN, a time in 2100) silences it:
it keeps checking and acts on its policy, even when it cannot write its view. Each watchdog here is the
real script in a process of its own, checking five times a second; every process it might signal is one
of this test's own sleeps."""

from __future__ import annotations

import http.server
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

from tests.conftest import REMOTE, wait_until
from tflab.sshhost import identity_record

sys.path.insert(0, str(REMOTE))
import watchdog  # noqa: E402  (remote/ scripts import as plain modules, as on a lab host)

pytestmark = pytest.mark.slow
NESTED = "[" * 100_000 + "]" * 100_000
DEEP = "[" * 30_000 + "]" * 30_000  # within the size bound: the depth bound refuses it


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Host:
    """A lab folder with its services (sleeps of this test's own, recorded as run-lab records them) and a
    watchdog that stops them (a --host)."""

    def __init__(self, root: Path):
        self.workdir = root / "lab"
        self.services = self.workdir / "services"
        self.folder = self.workdir / "autostop"
        self.services.mkdir(parents=True)
        self.folder.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.watchdog: subprocess.Popen | None = None

    def sleep(self, name: str | None = None, record: bool = True) -> subprocess.Popen:
        """A process of this test's own; with a name, a lab service whose pid file (and, if record, its
        identity, written by tflab's own shell) is in services/."""
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        self.procs.append(proc)
        if name:
            (self.services / f"{name}.pid").write_text(str(proc.pid))
            if record:
                subprocess.run(["sh", "-c", identity_record(str(proc.pid), ["sleep", "600"],
                                                            str(self.services / f"{name}.id"))], check=True, timeout=30)
        return proc

    def policy(self, **values) -> None:
        (self.folder / "policy.json").write_text(json.dumps({**watchdog.DEFAULT_POLICY, **values}))

    def start(self, *extra: str, env: dict | None = None) -> None:
        self.watchdog = subprocess.Popen([sys.executable, str(REMOTE / "watchdog.py"), "run", "--workdir",
                                          str(self.workdir), "--interval", "0.2", "--ssh-port", "1", *extra],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True, env=env)

    def view(self) -> dict:
        try:
            return json.loads((self.folder / "view.json").read_text())
        except (OSError, ValueError):
            return {}

    def acted(self, timeout: float = 30) -> str:
        """The watchdog's output once it has acted and ended (stop-services)."""
        try:
            out, _ = self.watchdog.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the watchdog did not act within {timeout} s") from None
        assert "acting: stop-services" in out, out
        return out

    def close(self) -> None:
        for proc in [self.watchdog, *self.procs]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def host(tmp_path):
    made = Host(tmp_path)
    yield made
    made.close()


def damage(path: Path, kind: str) -> None:
    """Replace path with a damaged file of the given kind."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if kind in ("nested", "deep"):
        path.write_text(NESTED if kind == "nested" else DEEP)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as f:
            f.write(b'{"idle_seconds": 1, "x": "' + b"a" * 10_000_000 + b'"}')
    elif kind == "numbers":
        path.write_text('{"idle_seconds": 1e300, "max_lifetime_seconds": Infinity, "keep_until": NaN, "enabled": 1}')


KINDS = ["nested", "deep", "fifo", "dev-zero", "folder", "huge", "numbers"]


@pytest.mark.parametrize("kind", KINDS)
def test_with_every_file_damaged_the_watchdog_still_acts_on_the_maximum_lifetime(host, kind):
    """The policy, peers, ports, lab-dir, Jupyter token and activity files, and view.json itself, all
    damaged the same way after the first check: the watchdog keeps its last good policy, and stops the
    lab's service when its maximum lifetime has passed (the view cannot even be written: view.json is
    damaged too, and a folder or FIFO cannot be replaced by a file)."""
    service = host.sleep("model-server")
    host.policy(idle_seconds=None, max_lifetime_seconds=3)
    host.start()
    wait_until(lambda: host.view().get("checked_at"), 20, what="the first check")
    for path in (host.folder / "policy.json", host.folder / "peers.json", host.services / "ports.json",
                 host.folder / "lab-dir", host.workdir / "jupyter-token", host.services / "model-server.activity",
                 host.folder / "view.json"):
        damage(path, kind)
    out = host.acted()
    assert "past its maximum lifetime of 3 s" in out
    service.wait(10)  # the lab's service was stopped
    assert "check failed" not in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_policy_before_the_first_check_is_no_information(host, kind):
    """A watchdog that starts with a damaged policy and no earlier view works on the defaults (said in its
    view), and `view` and `set` answer at once: `set` writes a good policy over a damaged file."""
    damage(host.folder / "policy.json", kind)
    host.start()
    view = wait_until(lambda: host.view().get("checked_at") and host.view(), 20, what="the first check")
    assert view["policy"] == watchdog.DEFAULT_POLICY
    assert any(p.startswith("policy.json: ") for p in view["problems"]), view["problems"]
    shown = json.loads(subprocess.run([sys.executable, str(REMOTE / "watchdog.py"), "view", "--workdir",
                                       str(host.workdir)], capture_output=True, text=True, timeout=30,
                                      check=True).stdout)
    assert shown["policy"]["idle_seconds"] == 3600
    done = subprocess.run([sys.executable, str(REMOTE / "watchdog.py"), "set", "--workdir", str(host.workdir),
                           "--idle", "2"], capture_output=True, text=True, timeout=30)
    if kind in ("folder",):  # a folder is not replaced: said in one line
        assert done.returncode == 1 and done.stderr.startswith("watchdog: cannot write the policy"), done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["policy"]["idle_seconds"] == 2
        assert json.loads((host.folder / "policy.json").read_text())["idle_seconds"] == 2


@pytest.mark.parametrize("keep", ["1e300", "Infinity", "NaN", "-1", '"soon"', str(4102444800)])  # last: 2100
def test_a_keep_alive_out_of_range_keeps_nothing_and_the_idle_lab_is_stopped(host, keep):
    """keep_until 1e300 made it fail on every check with an OverflowError (and never act); a keep-alive in
    2100 kept the lab for ever. Any keep_until beyond a year from now (or not a time) is refused."""
    service = host.sleep("tensorboard")
    host.policy(idle_seconds=2)
    host.start()
    wait_until(lambda: host.view().get("checked_at"), 20, what="the first check")
    text = (host.folder / "policy.json").read_text().replace('"keep_until": null', f'"keep_until": {keep}')
    (host.folder / "policy.json").write_text(text)  # not JSON (Infinity, NaN): the last good policy is kept
    out = host.acted()
    assert "idle for 2 s" in out
    service.wait(10)
    assert host.view()["policy"]["keep_until"] is None


def test_an_activity_stamp_from_the_future_is_no_activity(host):
    """The model server's activity file stamped in 2100 kept the lab alive for ever."""
    service = host.sleep("model-server")
    stamp = host.services / "model-server.activity"
    stamp.touch()
    os.utime(stamp, (4102444800, 4102444800))
    host.policy(idle_seconds=2)
    host.start()
    out = host.acted()
    assert "idle for 2 s" in out
    service.wait(10)
    assert "model-server.activity: stamped in the future; ignored" in host.view()["problems"]
    assert host.view()["sources"]["serving"]["active"] is False


def test_a_jupyter_kernel_active_in_the_future_is_no_activity(tmp_path):
    """Jupyter's answer is read bounded, and a kernel's last_activity from the future does not count."""
    kernels = [{"id": "k", "execution_state": "idle", "last_activity": "2100-01-01T00:00:00.000000Z"}]
    answers = {"/api/kernels": json.dumps(kernels), "/api/terminals": "[]"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = answers[self.path.split("?")[0]].encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "jupyter-token"
    token.write_text("t" * 48)
    try:
        port = server.server_address[1]
        assert watchdog.jupyter_active(port, str(token), time.time() - 30) == (False, "1 kernel(s) idle")
        kernels[0]["last_activity"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        answers["/api/kernels"] = json.dumps(kernels)
        assert watchdog.jupyter_active(port, str(token), time.time() - 30)[0] is True  # a real one counts
        answers["/api/kernels"] = NESTED
        assert watchdog.jupyter_active(port, str(token), time.time() - 30) == (False, "not answering")
    finally:
        server.shutdown()


def test_only_a_process_proved_to_be_the_lab_service_is_signalled(host):
    """Pid files naming pid 1, 0, -1, the watchdog itself, a stranger (a live process of this test's own:
    the same user, no record), a reused pid (a record whose start time, boot, owner or command is not the
    live process's), garbage, or a FIFO: each is left alone and said in the view; the lab's own service
    (recorded by tflab's shell as it started) is stopped."""
    service = host.sleep("model-server")
    strangers = {}
    for name in ("unrecorded", "reused", "other-boot", "other-user", "other-command", "other-pid"):
        strangers[name] = host.sleep(name, record=name != "unrecorded")
    forged = {"reused": {"start": -1}, "other-boot": {"boot": "0" * 36}, "other-user": {"uid": os.getuid() + 4242},
              "other-command": {"argv": ["python3", "model_server.py"]}, "other-pid": {"pid": service.pid}}
    for name, change in forged.items():
        record = host.services / f"{name}.id"
        document = json.loads(record.read_text())
        if name == "reused":  # the pid's previous owner started earlier
            change = {"start": document["start"] - 1}
        record.write_text(json.dumps(document | change))
    for name, text in (("init", "1"), ("zero", "0"), ("minus", "-1"), ("garbage", "12ab"), ("huge", "9" * 40)):
        (host.services / f"{name}.pid").write_text(text)
    os.mkfifo(host.services / "fifo.pid")
    host.policy(idle_seconds=2)
    host.start()
    wait_until(lambda: host.view().get("pid"), 20, what="the first check")
    own = host.view()["pid"]  # the watchdog's own pid, with a record that would pass as its own
    (host.services / "self.pid").write_text(str(own))
    subprocess.run(["sh", "-c", identity_record(str(own), [sys.executable, str(REMOTE / "watchdog.py")],
                                                str(host.services / "self.id"))], check=True, timeout=30)
    out = host.acted()
    service.wait(10)
    for name, proc in strangers.items():
        assert alive(proc.pid), f"{name} was signalled"
    ignored = json.loads(out.split("acted: ", 1)[1].splitlines()[0])["ignored"]
    said = {line.split(":")[0]: line for line in ignored}
    assert set(said) == {f"{n}.pid" for n in [*strangers, "init", "zero", "minus", "garbage", "huge", "fifo", "self"]}
    assert "pid 1 is never a lab service's" in said["init.pid"] and "pid 0 is never" in said["zero.pid"]
    assert f"pid {own} is never" in said["self.pid"]
    assert "nothing proves it is the lab's" in said["unrecorded.pid"]
    assert "another process now" in said["reused.pid"] and "another user" in said["other-user.pid"]
    assert "runs another command" in said["other-command.pid"] and "not a regular file" in said["fifo.pid"]
    assert "another pid or boot" in said["other-boot.pid"] and "another pid or boot" in said["other-pid.pid"]


def test_a_service_that_ended_leaves_a_pid_its_successor_may_reuse_unsignalled(host):
    """A recorded service that ended: its pid is free for anyone. The record no longer matches whatever
    runs with that pid (its start time), so nothing is signalled; an ended service is not said as left
    alone (there is nothing to stop)."""
    old = host.sleep("tensorboard")
    old.kill()
    old.wait(10)
    assert watchdog.service(str(host.services / "tensorboard"))[0] is None
    assert "not running" in watchdog.service(str(host.services / "tensorboard"))[2]
    survivor = host.sleep()
    record = json.loads((host.services / "tensorboard.id").read_text())
    # The same record with the survivor's pid (as if it had reused the pid): its start time differs.
    (host.services / "tensorboard.pid").write_text(str(survivor.pid))
    (host.services / "tensorboard.id").write_text(json.dumps(record | {"pid": survivor.pid}))
    assert "another process now" in watchdog.service(str(host.services / "tensorboard"))[2]
    done = watchdog.stop_services(str(host.services))
    assert done["stopped"] == [] and alive(survivor.pid)


def test_a_script_service_is_proved_by_its_interpreter_and_arguments(tmp_path):
    """A service started as a #! script runs as its interpreter with the script's path: still the same
    command (watchdog.runs)."""
    assert watchdog.runs(["tensorboard", "--logdir", "x"], ["/venv/bin/python3", "/venv/bin/tensorboard", "--logdir",
                                                            "x"])
    assert watchdog.runs(["sleep", "600"], ["sleep", "600"])
    assert not watchdog.runs(["sleep", "600"], ["sleep", "601"])
    assert not watchdog.runs(["tensorboard", "--logdir", "x"], ["/usr/bin/python3", "evil.py", "--logdir", "x"])
    assert not watchdog.runs(["sleep", "600"], [])


@pytest.mark.parametrize("kind", KINDS)
def test_reading_a_damaged_file_never_blocks_nor_floods(tmp_path, kind):
    path = tmp_path / "file.json"
    path.touch()
    damage(path, kind)
    problems: list = []
    value = watchdog.read_json(str(path), dict, problems)
    if kind == "numbers":  # read, and refused value by value
        assert value is None and "Infinity is not a number" in problems[0]
        policy = watchdog.valid_policy({"idle_seconds": 1e300, "keep_until": 1e300, "enabled": 1},
                                       watchdog.DEFAULT_POLICY, problems)
        assert policy == watchdog.DEFAULT_POLICY and len(problems) == 4
    else:
        assert value is None and len(problems) == 1, problems
        expected = {"nested": "larger than", "deep": "nested deeper", "huge": "larger than"}.get(kind, "not a regular")
        assert expected in problems[0], problems



@pytest.mark.parametrize("b_knows", ["another lab's token", "no token (an older peers.json)"])
def test_a_node_of_another_lab_is_no_activity(tmp_path, b_knows):
    """Two watchdogs answering each other on their peer ports, node a active on its own (a keep-alive): with
    the same token b would be kept (tests/ssh/test_watchdog.py); with another lab's token, or none, a's answer
    is not activity (a does not even answer a question signed with another token) and b stops its idle lab."""
    from tflab import ports

    listen = {name: ports.free_port() for name in "ab"}
    nodes = {name: Host(tmp_path / name) for name in "ab"}
    try:
        tokens = {"a": "a1" * 32, "b": "b2" * 32}
        for name, other in (("a", "b"), ("b", "a")):
            peers = [f"127.0.0.1:{listen[other]}"]
            document = {"token": tokens[name], "peers": peers} if name == "a" or "another" in b_knows else peers
            (nodes[name].folder / "peers.json").write_text(json.dumps(document))
        nodes["a"].policy(idle_seconds=2, keep_until=time.time() + 120)
        nodes["b"].policy(idle_seconds=2)
        service = nodes["b"].sleep("model-server")
        for name in "ab":
            nodes[name].start("--peer-port", str(listen[name]), "--peer-bind", "127.0.0.1")
        out = nodes["b"].acted()
        assert "idle for 2 s" in out
        service.wait(10)
        detail = nodes["b"].view()["sources"]["peers"]["detail"]
        assert ("not answering: 127.0.0.1:%d" % listen["a"] in detail if "another" in b_knows
                else "no lab token" in detail), detail
        assert nodes["a"].watchdog.poll() is None  # a, kept alive on its own, runs on
    finally:
        for node in nodes.values():
            node.close()


# --------------------------------------------------------------------------- a lab made by `up` (--action shutdown)


def fake_power(tmp_path: Path, failing: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """`shutdown`, `systemctl`, `poweroff` and `wall` of this test's own, first on PATH (this machine stays up):
    each logs its call; those named in failing exit 1 (as `shutdown` does when logind cannot be reached)."""
    folder, log = tmp_path / "bin", tmp_path / "power.log"
    folder.mkdir()
    for name in ("shutdown", "systemctl", "poweroff", "wall"):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {int(name in failing)}\n')
        (folder / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}
    env.pop("TFLAB_WATCHDOG_SHUTDOWN", None)
    return env, log


def calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if not line.startswith("wall")] if log.exists() else []


def test_an_up_lab_whose_folder_is_deleted_is_still_stopped(host, tmp_path):
    """`rm -rf ~/tflab` on an `up` lab made the watchdog exit 0 (and systemd's Restart=on-failure left it so):
    the lab billed on until `tflab down`. It keeps watching on its last good policy, without making the lab's
    folder again (as root it would make a folder the lab user cannot write)."""
    env, log = fake_power(tmp_path)
    host.policy(idle_seconds=3)
    host.start("--action", "shutdown", env=env)  # the policy in its memory is enough here
    wait_until(lambda: host.view().get("checked_at"), 20, what="the first check")
    shutil.rmtree(host.workdir)
    wait_until(lambda: "shutdown -h now" in calls(log), 30, what="the shutdown")
    assert host.watchdog.poll() is None  # it never ends on its own
    assert not host.workdir.exists()


def test_a_deleted_policy_keeps_the_maximum_lifetime_even_across_a_restart(host, tmp_path):
    """A deleted policy.json fell back to the defaults, which have no maximum lifetime. The last good policy
    holds, and is kept in --state (root's on a lab made by `up`), so a watchdog started again (Restart=always)
    after the lab's folder went too still acts on it. An instance's lifetime counts from its boot."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    env, log = fake_power(tmp_path)
    state = tmp_path / "state"
    host.policy(idle_seconds=None, max_lifetime_seconds=uptime + 5)
    host.start("--action", "shutdown", "--state", str(state), env=env)
    wait_until(lambda: (state / "policy.json").exists(), 20, what="the policy kept in --state")
    (host.folder / "policy.json").unlink()
    view = wait_until(lambda: "policy.json: missing; the last good policy holds" in host.view().get("problems", [])
                      and host.view(), 20, what="a check without the policy file")
    assert view["policy"]["max_lifetime_seconds"] == uptime + 5
    host.watchdog.kill()
    host.watchdog.wait(10)
    shutil.rmtree(host.workdir)
    log.unlink(missing_ok=True)
    host.start("--action", "shutdown", "--state", str(state), env=env)
    wait_until(lambda: "shutdown -h now" in calls(log), 30, what="the restarted watchdog's shutdown")
    assert host.watchdog.poll() is None


def test_autostop_after_the_lab_folder_was_deleted_keeps_the_kept_maximum_lifetime(host, tmp_path):
    """After `rm -rf ~/tflab` and a run-lab (no policy, no view yet), `tflab autostop --idle` (`set`) changed
    the idle time over the defaults, dropping the maximum lifetime the watchdog still keeps in root's copy."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "policy.json").write_text(json.dumps({**watchdog.DEFAULT_POLICY, "max_lifetime_seconds": 43200}))
    done = subprocess.run([sys.executable, str(REMOTE / "watchdog.py"), "set", "--workdir", str(host.workdir),
                           "--state", str(state), "--idle", "5"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    written = json.loads((host.folder / "policy.json").read_text())
    assert written["idle_seconds"] == 5 and written["max_lifetime_seconds"] == 43200


def test_a_shutdown_that_fails_is_tried_again_harder_while_the_machine_is_up(host, tmp_path):
    """`shutdown` was run once, its exit status ignored: one that failed left the lab billing. A failed one is
    followed at once by `systemctl poweroff --force`; while the machine is still up, every --retry seconds
    a harder one, down to `poweroff -f`; the view says what was tried."""
    env, log = fake_power(tmp_path, failing=("shutdown",))
    host.policy(idle_seconds=1)
    host.start("--action", "shutdown", "--state", str(tmp_path / "state"), "--retry", "1", env=env)
    wait_until(lambda: "poweroff -f" in calls(log), 30, what="poweroff -f")
    assert calls(log)[:4] == ["shutdown -h now", "systemctl poweroff --force", "systemctl poweroff --force",
                              "poweroff -f"]
    tried = wait_until(lambda: host.view().get("acted", {}) and "poweroff -f: 0" in host.view()["acted"]["tried"]
                       and host.view()["acted"]["tried"], 20, what="the view")
    assert tried == ["poweroff -f: 0"]
    assert host.watchdog.poll() is None


class Stranger(socketserver.ThreadingTCPServer):
    """Something on the peers' port that answers every question with the same bytes."""

    daemon_threads = allow_reuse_address = True

    def __init__(self, answer: bytes):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.recv(1024)
                self.request.sendall(answer)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize("answer", [b'{"active": ["keep"], "mac": "\\u00e9"}', b'{"active": ["\\ud800"], "mac": "0"}',
                                    b'{"active": ["keep"], "mac": 5}', b"\xff\xfe", b"[1]"])
def test_a_stranger_answering_garbage_on_the_peers_port_keeps_nothing_alive(host, answer):
    """A non-ASCII mac made hmac.compare_digest raise TypeError, which the check counted as activity: a
    stranger kept an idle lab alive for ever. Any answer that fails is a node not answering."""
    stranger = Stranger(answer)
    try:
        port = stranger.server_address[1]
        (host.folder / "peers.json").write_text(json.dumps({"token": "ab" * 32, "peers": [f"127.0.0.1:{port}"]}))
        service = host.sleep("model-server")
        host.policy(idle_seconds=2)
        host.start("--peer-port", "0", "--peer-bind", "127.0.0.1")
        out = host.acted()
        assert "idle for 2 s" in out
        service.wait(10)
        assert f"not answering: 127.0.0.1:{port}" in host.view()["sources"]["peers"]["detail"]
    finally:
        stranger.shutdown()
        stranger.server_close()


def test_a_malformed_question_does_not_silence_a_node(host):
    """A question with a non-ASCII mac killed the thread that answers the other nodes (the port stayed bound,
    nobody accepted): the lab's own nodes then saw this one as idle. Every connection's failure is its own."""
    from tflab import ports

    port, token = ports.free_port(), "cd" * 32
    (host.folder / "peers.json").write_text(json.dumps({"token": token, "peers": ["127.0.0.1:1"]}))
    host.policy(idle_seconds=600, keep_until=time.time() + 600)  # active on its own: a keep-alive
    host.start("--peer-port", str(port), "--peer-bind", "127.0.0.1")

    def answers():
        try:
            return watchdog.ask_peer(f"127.0.0.1:{port}", port, token)
        except OSError:
            return None

    assert wait_until(answers, 20, what="the node's answer") == ["keep"]
    for question in (b'{"ask": "n", "mac": "\\u00e9"}\n', b'{"ask": "\\ud800", "mac": "0"}\n', b"[1]\n",
                     b"\xff\n", b'{"ask": "n", "mac": "' + b"\xc3\xa9" * 100 + b'"}\n'):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(question)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1024) == b""  # no answer, and the connection closed
    assert watchdog.ask_peer(f"127.0.0.1:{port}", port, token) == ["keep"]  # still answering its own


def test_the_peers_token_is_never_in_a_command_line(tmp_path):
    """run-lab and `up` put the token inside an `sh -c` command line, which any user of the host sees in its
    process list. It goes on the SSH channel's stdin (a real sshd, a throwaway user's home); no process of the
    host ever shows it; the file is the lab user's only (0600), even where a world-readable one was."""
    from types import SimpleNamespace

    from tests.sshd import Sshd
    from tests.users import users
    from tflab import autostop, ports
    from tflab.ssh import Connection, SshTarget

    token = "ef" * 32
    state = SimpleNamespace(nodes=[{"index": 0, "private_ip": "10.0.0.5"}, {"index": 1, "private_ip": "10.0.0.6"}])
    with users(1) as (name,):
        server = Sshd(tmp_path / "sshd", ports.free_port(), user=name).start()
        try:
            peers = Path(os.path.expanduser(f"~{name}")) / "tflab" / "autostop" / "peers.json"
            peers.parent.mkdir(parents=True)
            peers.write_text("{}")
            peers.chmod(0o644)
            for path in (peers, peers.parent, peers.parent.parent):
                shutil.chown(path, name, name)
            seen, commands, done = [], [], threading.Event()

            def watch():  # the host's process list, as another user of it would read it, while tflab writes
                while not done.is_set():
                    for pid in filter(str.isdigit, os.listdir("/proc")):
                        try:
                            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                                seen.append(pid)
                        except OSError:
                            pass

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            target = SshTarget("127.0.0.1", name, server.port, str(server.user_key), str(tmp_path / "known_hosts"),
                               accept_new=True)
            with Connection(target) as connection:
                real = connection.exec_bytes

                def exec_bytes(command, **kwargs):
                    commands.append(command)
                    return real(command, **kwargs)

                connection.exec_bytes = exec_bytes
                for _ in range(3):
                    autostop.write_peers(connection, state, 0, token)
            done.set()
            watcher.join(10)
        finally:
            server.stop()
        assert commands and not [c for c in commands if token in c] and not seen
        assert json.loads(peers.read_text()) == {"token": token, "peers": ["10.0.0.6"]}
        assert peers.stat().st_mode & 0o777 == 0o600
