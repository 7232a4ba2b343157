"""Shared fixtures: real TensorFlow, real processes, loopback only, every wait bounded."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REMOTE = REPO / "remote"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No test touches real AWS: fake credentials, no user config, and moto's validations on (set before
# moto is imported anywhere, so they apply).
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SECURITY_TOKEN="testing",
                  AWS_SESSION_TOKEN="testing", AWS_DEFAULT_REGION="us-west-2",
                  AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                  MOTO_ENABLE_AMI_VALIDATION="true", MOTO_ENABLE_KEYPAIR_VALIDATION="true",
                  MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true")
for _var in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)

from tests import moto_placement  # noqa: E402  (after the settings above: it imports moto)

moto_placement.install()  # moto has no placement groups: tests/moto_placement.py adds them

if str(REMOTE) not in sys.path:  # the remote/ scripts import as plain modules, as on a lab host
    sys.path.insert(0, str(REMOTE))


@pytest.fixture(autouse=True)
def no_placement_groups_yet():
    """Each test's moto account starts without placement groups, as it starts without anything else."""
    moto_placement.reset()


CLOUDBOX = REPO / "tests" / "cloudbox"


def cheap_to_repeat(fixture_function):
    """Marks a module-scoped fixture made in well under a second (a loopback sshd, a tripwire endpoint), put
    under its @pytest.fixture: a test that shares nothing else with its module may run on either worker, which
    then makes its own."""
    fixture_function.cheap_to_repeat = True
    return fixture_function


def shares_a_fixture(item) -> bool:
    """Whether the test uses a fixture made once for its module or class that is costly to make twice (a lab run,
    a model server, a browser): then it runs on the worker that made it."""
    defs = getattr(item, "_fixtureinfo", None)
    for name in defs.names_closure if defs else ():
        for fixturedef in defs.name2fixturedefs.get(name, ()):
            if fixturedef.scope in ("module", "class", "package") and not getattr(fixturedef.func,
                                                                                  "cheap_to_repeat", False):
                return True
    return False


def xdist_group(item) -> str | None:
    """Which tests run on one pytest-xdist worker, one after another (scripts/test.sh, `--dist loadgroup`): the
    EC2-in-a-box tests (one box: its bridge, netns names and state folder), and a module's tests that share a
    costly fixture (made once). Every other test goes to whichever worker is free. Labs on this machine run at
    once on several workers: each claims the ports it chooses until its services bind them
    (remote/choose_ports.py), as two users' labs on one host do."""
    path = Path(str(item.fspath))
    if path.is_relative_to(CLOUDBOX):
        return "cloudbox"
    return str(path.relative_to(REPO)) if shares_a_fixture(item) else None


def first_the_longest(items) -> list:
    """The box, then the modules that run TensorFlow pipelines (marked slow), then the rest: the workers take
    groups in this order, so the long ones start first and the short ones fill in at the end (a module's tests
    stay together, in their order)."""
    ranks: dict = {}  # module -> its rank, the lowest of its tests'
    for item in items:
        rank = 0 if Path(str(item.fspath)).is_relative_to(CLOUDBOX) else 1 if item.get_closest_marker("slow") else 2
        ranks[item.fspath] = min(rank, ranks.get(item.fspath, rank))
    return sorted(items, key=lambda item: ranks[item.fspath])


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which puts the mark's group into the test's id
def pytest_collection_modifyitems(items):
    items[:] = first_the_longest(items)
    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    dist = config.getoption("dist", None) if config.pluginmanager.hasplugin("xdist") else None
    if dist == "loadgroup" and tuple(int(n) for n in pytest.__version__.split(".")[:2]) >= (9, 2):
        # pytest 9.2 keeps the node id where pytest-xdist 3.8 does not write the group (Node._id, not
        # _nodeid): the groups would be lost without a word, and two EC2 boxes run at once
        raise pytest.UsageError(f"pytest {pytest.__version__} loses pytest-xdist's --dist loadgroup groups: "
                                "install the versions pyproject.toml names (bash scripts/install.sh --test)")


@pytest.fixture(autouse=True, scope="session")
def state_home_of_the_session(tmp_path_factory):
    """No test reads or writes the user's own ~/.tflab: the session (each xdist worker) has a state home of
    its own; a test that needs a fresh one still sets TFLAB_HOME itself."""
    os.environ["TFLAB_HOME"] = str(tmp_path_factory.mktemp("tflab-home"))
    yield


@pytest.fixture(autouse=True, scope="session")
def loopback_only():
    """A safety net: in the test process, a connection to anything but loopback fails at once.

    (moto's instances carry made-up public addresses; nothing here may ever try them.)
    """
    import ipaddress
    import socket

    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise OSError(f"tests connect to loopback only, not {host}")

    def connect(sock, address):
        check(sock, address)
        return original_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return original_connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    yield
    socket.socket.connect, socket.socket.connect_ex = original_connect, original_connect_ex


def tflab(*args: str, timeout: float = 300, cwd: str | os.PathLike | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the tflab CLI as a user does, in a subprocess; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "tflab", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported once for the session."""
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def steps_module():
    import steps

    return steps


@pytest.fixture(scope="session")
def lab_steps_run(tmp_path_factory):
    """remote/steps.py run once as a lab host runs it (its own process), seed 7: (workdir, report)."""
    workdir = tmp_path_factory.mktemp("steps")
    report = workdir / "report.json"
    proc = subprocess.run([sys.executable, str(REMOTE / "steps.py"), "--workdir", str(workdir), "--seed", "7",
                           "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, json.loads(report.read_text()), proc.stdout


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns a truthy value or timeout passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def assert_valid_report(document: dict) -> dict:
    """Check a run-lab report against its published JSON Schema (tflab/report.schema.json)."""
    import jsonschema

    from tflab.report import SCHEMA_PATH

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return document


AL2023_X86 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


@contextlib.contextmanager
def moto_server(parameter: str):
    """A moto server on 127.0.0.1 (its endpoint), with an SSM parameter holding an image id as the Deep
    Learning AMI's does. Moto servers in one process share one account: give each user its own parameter."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tflab import ports

    port = ports.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        ssm = boto3.client("ssm", region_name="us-west-2", endpoint_url=endpoint)
        image = ssm.get_parameter(Name=AL2023_X86)["Parameter"]["Value"]
        ssm.put_parameter(Name=parameter, Value=image, Type="String", DataType="aws:ec2:image", Overwrite=True)
        yield endpoint
        ssm.delete_parameter(Name=parameter)
    finally:
        server.stop()
