"""A lab's URLs as a person meets them (issue 22 items 1 and "Stable local URLs"): run-lab never prints
the URLs of its closed tunnels as if they worked, it says which command opens them; the lab remembers
its local ports (in its folder of the state home), so `tflab tunnel` opens the same URLs again, and a
URL printed by one `tunnel` works in the next."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import tflab
from tflab.labs import LOCAL_PORTS_FILE, host_lab_name
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost
from tests.ssh.conftest import TunnelProcess, host_args, ports_of_its_own

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def detached_lab(sshd, tmp_path_factory):
    """run-lab --host --detach with its own state home: (proc, report on stdout, workdir, tmp, env)."""
    tmp = tmp_path_factory.mktemp("stable")
    workdir = tmp / "host-workdir"
    env = {"TFLAB_HOME": str(tmp / "home")}
    ports_of_its_own(tmp / "home", host_lab_name("127.0.0.1", sshd.port))
    try:
        proc = tflab("run-lab", *host_args(sshd, tmp), "--accept-new-host-key", "--python", sys.executable,
                     "--workdir", str(workdir), "--out", str(tmp / "results"), "--json", "--seed", "5",
                     "--steps", "20", "--detach", env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        yield proc, json.loads(proc.stdout), workdir, tmp, env
    finally:
        target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp / "known_hosts"))
        with Connection(target) as conn:
            SshHost(conn).stop_all_services(f"{workdir}/services")


def run_name(report: dict) -> str:
    return report["artifacts"]["logdir"].rstrip("/").rsplit("/", 1)[-1]


def tensorboard_runs(url: str) -> list:
    with urllib.request.urlopen(url + "data/runs", timeout=10) as response:
        return json.load(response)


def test_run_lab_says_its_urls_close_with_it_and_which_command_opens_them(detached_lab, sshd):
    proc, report, workdir, tmp, _ = detached_lab
    again = f"tflab tunnel --name {host_lab_name('127.0.0.1', sshd.port)}"  # the --host lab, by the name it got
    assert f"until `{again}` opens them again" in proc.stderr
    assert report["tunnel"] == again
    saved = json.loads((tmp / "results" / "report.json").read_text())
    assert saved["tunnel"] == again and saved["urls"]["tensorboard"] == report["urls"]["tensorboard"]


def test_the_lab_remembers_its_local_ports_and_tunnel_opens_the_same_urls_again(detached_lab, sshd):
    proc, report, workdir, tmp, env = detached_lab
    remembered = json.loads((tmp / "home" / "labs" / host_lab_name("127.0.0.1", sshd.port) / LOCAL_PORTS_FILE)
                            .read_text())
    tensorboard = report["urls"]["tensorboard"]
    assert tensorboard == f"http://127.0.0.1:{remembered['tensorboard']}/"
    assert report["urls"]["serving_grpc"] == f"127.0.0.1:{remembered['serving']}"
    args = [*host_args(sshd, tmp), "--workdir", str(workdir)]
    urls = []
    for _ in range(2):  # the URL run-lab printed works through one tunnel, and the next
        tunnel = TunnelProcess(args, env)
        try:
            forwards = tunnel.forwards()
            urls.append(f"http://{forwards['tensorboard']['local']}/")
            assert run_name(report) in tensorboard_runs(urls[-1])
        finally:
            assert tunnel.close() == 0, "".join(tunnel.lines)
    assert urls == [tensorboard, tensorboard]


def test_a_url_printed_by_one_tunnel_works_in_the_next_even_when_its_port_had_moved(detached_lab, sshd):
    """The first tunnel finds the lab's TensorBoard port taken here and moves; the next, with the port free
    again, keeps the moved one: the URL it printed last is the one that keeps working."""
    import socket

    _, report, workdir, tmp, env = detached_lab
    args = [*host_args(sshd, tmp), "--workdir", str(workdir)]
    taken = int(report["urls"]["tensorboard"].rsplit(":", 1)[1].strip("/"))
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        first = TunnelProcess(args, env)
        try:
            moved = first.forwards()["tensorboard"]["local"]
        finally:
            assert first.close() == 0, "".join(first.lines)
    finally:
        squatter.close()
    assert moved != f"127.0.0.1:{taken}"
    second = TunnelProcess(args, env)
    try:
        assert second.forwards()["tensorboard"]["local"] == moved
        assert run_name(report) in tensorboard_runs(f"http://{moved}/")
    finally:
        assert second.close() == 0, "".join(second.lines)


def test_tunnel_prints_jupyters_url_with_its_token_and_no_file_here_holds_it(detached_lab, sshd):
    proc, report, workdir, tmp, env = detached_lab
    token = (workdir / "jupyter-token").read_text().strip()  # the host is this machine: its file, as run-lab made it
    assert len(token) >= 32
    tunnel = TunnelProcess([*host_args(sshd, tmp), "--workdir", str(workdir)], env)
    try:
        forwards = tunnel.forwards()
        url = tunnel.events[0]["urls"]["jupyter"]
        assert url == f"http://{forwards['jupyter']['local']}/lab?token={token}"
        base = url.split("/lab?")[0]
        with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=10) as response:
            listed = [item["name"] for item in json.load(response)["content"]]
        assert any(name.endswith(".ipynb") for name in listed), listed
        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is what lets it in
            urllib.request.urlopen(f"{base}/api/contents", timeout=10)
        assert refused.value.code == 403
    finally:
        assert tunnel.close() == 0, "".join(tunnel.lines)
    assert any(f"/lab?token={token}" in line for line in tunnel.lines)  # printed for the person, too
    for folder in (tmp / "home", tmp / "results"):  # never written here
        files = [path for path in folder.rglob("*") if path.is_file()]
        assert files, folder
        for path in files:
            assert token.encode() not in path.read_bytes(), path


def test_a_host_lab_is_a_name_tunnel_ssh_autostop_reach_it_without_its_flags(detached_lab, sshd):
    """run-lab --host remembered the lab (address, user, port, identity, known_hosts, workdir) under the name
    derived from its address: --name alone reaches it, with no AWS call (no credentials would do here)."""
    _, report, workdir, tmp, env = detached_lab
    name = host_lab_name("127.0.0.1", sshd.port)
    no_aws = {**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent"}
    shell = tflab("ssh", "--name", name, "--", "cat", f"{workdir}/services/ports.json", env=no_aws)
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout) == report["host"]["ports"]
    watchdog = tflab("autostop", "--name", name, "--json", env=no_aws)  # the watchdog in run-lab's --workdir
    assert watchdog.returncode == 0, watchdog.stderr
    tunnel = TunnelProcess(["--name", name], no_aws)  # the ports the host chose, from the remembered workdir
    try:
        forwards = tunnel.forwards()
        assert {n: forwards[n]["remote_port"] for n in forwards} == \
               {n: p for n, p in report["host"]["ports"].items() if p}
        assert run_name(report) in tensorboard_runs(f"http://{forwards['tensorboard']['local']}/")
    finally:
        assert tunnel.close() == 0, "".join(tunnel.lines)
