"""`tflab open`, the one command to come back to a lab (issue 22), on a lab run on any SSH machine: after its
services were stopped it brings them back serving the last exported version with no new training, behind
URLs that keep working from one tunnel to the next, with no AWS call (AWS is a tripwire here)."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from tests.conftest import tflab
from tests.ssh.conftest import HOST_LAB, TunnelProcess, stop_lab_services

pytestmark = pytest.mark.slow


def host_files(lab) -> dict:
    """What training would change on the host: the model's versions, the TensorBoard runs, the steps' report."""
    return {"versions": sorted(p.name for p in (lab.workdir / "models" / "nn").iterdir()),
            "runs": sorted(p.name for p in (lab.workdir / "logs").iterdir()),
            "steps": (lab.workdir / "steps-report.json").stat().st_mtime_ns,
            "notebooks": {p.name: p.stat().st_mtime_ns for p in (lab.workdir / "notebooks").glob("*.ipynb")}}


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_open_brings_the_services_back_with_the_last_version_and_no_training(host_lab, sshd, aws):
    from tflab.client import ServingClient

    lab = host_lab
    stop_lab_services(lab, sshd)
    before = host_files(lab)
    first = TunnelProcess(["--name", HOST_LAB], lab.env, command="open")
    try:
        first.forwards(timeout=240)
        urls = first.events[0]["urls"]
        with ServingClient(urls["serving_grpc"], timeout=10) as client:
            result = client.predict([1.0], model="nn", signature="prediction")
        assert result.version == lab.report["server"]["version"]
        before_stop = next(p["predicted"] for p in lab.report["predictions"] if p["x"] == 1.0)
        assert result.outputs == pytest.approx([before_stop], rel=1e-5)  # the same model answers
        run = lab.report["artifacts"]["logdir"].rstrip("/").rsplit("/", 1)[-1]
        assert run in get(urls["tensorboard"] + "data/runs")
        base, token = urls["jupyter"].split("/lab?token=")
        assert any(i["name"].endswith(".ipynb") for i in get(f"{base}/api/contents?token={token}")["content"])
    finally:
        assert first.close() == 0, "".join(first.lines)
    log = "".join(first.lines)
    assert "nothing trained" in log and "started: TensorBoard" in log, log
    assert host_files(lab) == before  # no new version, no new run, the notebooks as they were
    # The services now run: the next open keeps them, and the URLs the first printed work through it. With
    # --browser, Python's webbrowser opens Jupyter's and TensorBoard's (the browser it runs: $BROWSER).
    opened = lab.tmp / "opened.txt"
    browser = lab.tmp / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    second = TunnelProcess(["--name", HOST_LAB, "--browser"], {**lab.env, "BROWSER": str(browser)}, command="open")
    try:
        second.forwards(timeout=240)
        assert second.events[0]["urls"] == urls
        assert run in get(urls["tensorboard"] + "data/runs")
    finally:
        assert second.close() == 0, "".join(second.lines)
    assert "kept running: TensorBoard" in "".join(second.lines)
    assert opened.read_text().split() == [urls["jupyter"], urls["tensorboard"]]
    for path in (lab.tmp / "home").rglob("*"):  # Jupyter's token is never written here
        assert not path.is_file() or token.encode() not in path.read_bytes(), path
    assert aws.connections == 0


def test_open_of_an_unknown_lab_or_one_with_nothing_exported_is_one_line(host_lab, sshd, aws):
    lab = host_lab
    proc = tflab("open", "--name", "nosuch", env=lab.env)
    assert proc.returncode == 7 and "tflab: error: no lab named 'nosuch'" in proc.stderr and "hint:" in proc.stderr
    models = lab.workdir / "models"
    models.rename(lab.workdir / "models-away")
    try:
        proc = tflab("open", "--name", HOST_LAB, env=lab.env)
    finally:
        (lab.workdir / "models-away").rename(models)
    assert proc.returncode == 7 and "no exported version of model nn" in proc.stderr, proc.stderr
    assert "hint: `tflab run-lab` trains and exports it" in proc.stderr
    assert aws.connections == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_open_with_its_tunnels_and_leaves_the_lab_serving(host_lab, sshd, aws, sig):
    """open waits until Ctrl-C, as tunnel does: SIGTERM, or SIGHUP (its terminal closed), is its normal way out
    (exit 0, README: Signals), and ends its ssh child and local ports with it; the services it brought back
    are the lab's, and keep running there."""
    from tests.e2e.test_signals import Command, assert_free

    lab = host_lab
    cmd = Command("open", "--name", HOST_LAB, "--json", env=lab.env)
    cmd.wait_for('"forwards"', timeout=240)
    event = json.loads(next(line for line in cmd.lines if line.startswith("{")))
    local = [int(f["local"].rsplit(":", 1)[1]) for f in event["forwards"].values()]
    assert cmd.signal(sig) == 0, cmd.output[-3000:]
    assert cmd.left_behind() == []  # the ssh child carrying the forwards too
    assert_free(*local)
    for service in ("model-server", "tensorboard", "jupyter"):  # the host is this machine
        pid = int((lab.workdir / "services" / f"{service}.pid").read_text())
        os.kill(pid, 0)
    assert aws.connections == 0
