"""Headless Chromium (Debian's `chromium`, installed by scripts/install.sh --test) driven by Playwright, and a
lab made by `tflab run-lab --host` on a real sshd on 127.0.0.1, reached through tflab's tunnels.

Playwright's own browser download is never used: it launches the system's Chromium. A test that fails
keeps a screenshot of what the browser showed (its path is printed) under the test's tmp folder.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import tflab
from tests.sshd import SSHD, Sshd
from tflab import ports
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost
from tflab.tunnels import Forward, Tunnels

CHROMIUM = "/usr/bin/chromium"
# What this environment needs (no GPU, no network but loopback, a throwaway profile each launch).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if not shutil.which("chromium") or not __import__("os").path.exists(SSHD):
    raise RuntimeError("chromium or sshd is missing: run `bash scripts/install.sh --test`")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.failed_call = report.failed
    return report


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One `run-lab --host` on the module's sshd, its services left running on the "host" (this machine),
    and tflab's tunnels to them: (report, tunnels, workdir)."""
    tmp = tmp_path_factory.mktemp("browser-lab")
    sshd = Sshd(tmp / "sshd", ports.free_port()).start()
    workdir = tmp / "host-workdir"
    target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp / "known_hosts"))
    try:
        proc = tflab("run-lab", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
                     "--known-hosts", str(tmp / "known_hosts"), "--accept-new-host-key", "--python", sys.executable,
                     "--workdir", str(workdir), "--out", str(tmp / "results"), "--json", "--seed", "5",
                     "--steps", "50", timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(proc.stdout)
        with Connection(target) as conn, Tunnels(conn, [Forward(name, port, 0) for name, port
                                                       in report["host"]["ports"].items() if port]) as tunnels:
            yield report, tunnels, workdir
    finally:
        try:
            with Connection(target) as conn:
                SshHost(conn).stop_all_services(f"{workdir}/services")
        finally:
            sshd.stop()
        assert left_in(workdir) == []  # Jupyter's kernels (their cwd is the notebooks' folder) ended with it


def left_in(folder) -> list[str]:
    """Live processes that mention folder on their command line or run in it."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(f"{pid} {cmdline}")
    return found


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A headless Chromium with a fresh profile (its own --user-data-dir) for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, request, tmp_path):
    """A page; when the test fails, a screenshot of it is kept (path printed) as the test's artifact."""
    page = browser_context.new_page()
    yield page
    if getattr(request.node, "failed_call", False):
        shot = tmp_path / f"{request.node.name}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the failure: {shot}")
        except Exception as exc:  # noqa: BLE001 - the failure itself is what matters
            print(f"\nno screenshot ({exc})")
    page.close()
