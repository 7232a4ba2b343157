"""What a careless user types: one `tflab: error:` line and a hint, a documented exit code (2 bad
command line, 3 bad input), no traceback, and for `up` nothing asked of AWS, nothing made there."""

from __future__ import annotations

import base64
import gzip
import json
import shlex
import socket
import subprocess
import threading
from concurrent import futures

import boto3
import pytest

from tests.conftest import moto_server as moto_endpoint, tflab
from tflab import cloud, ports
from tflab.errors import InputError
from tflab.ssh import parse_host
from tflab.state import StateStore, check_name, check_ssh_user

PARAMETER = "/test/bad-input/ami-id"  # not the e2e tests' name: moto servers in one process share one account
UP = ["up", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER, "--host-key-timeout", "0",
      "--ssh-host", "127.0.0.1", "--ssh-port", "1", "--ssh-timeout", "1", "--no-wait", "--yes"]


def assert_refused(proc, code: int, *fragments: str) -> None:
    """Exactly `tflab: error: ...` and its hint on stderr, the exit code, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 2 and lines[0].startswith("tflab: error: ") and lines[1].startswith("  hint: "), \
        proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


class Tripwire:
    """A TCP listener standing in for AWS (AWS_ENDPOINT_URL): counts every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def no_aws(tmp_path):
    """Run the CLI with AWS at a tripwire: a test then sees whether any AWS call was tried."""
    wire = Tripwire()
    env = {"AWS_ENDPOINT_URL": wire.url, "TFLAB_HOME": str(tmp_path / "home"), "AWS_MAX_ATTEMPTS": "1"}

    def run(*args, **kwargs):
        return tflab(*args, env={**env, **kwargs.pop("env", {})}, timeout=60, cwd=tmp_path, **kwargs)

    run.wire = wire
    run.home = tmp_path / "home"
    yield run
    wire.stop()


@pytest.fixture(scope="module")
def moto_server():
    with moto_endpoint(PARAMETER) as endpoint:
        yield endpoint


def account(endpoint: str) -> dict:
    """Everything in the moto account that `up` could have made."""
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint)
    return {"instances": [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                          if i["State"]["Name"] != "terminated"],
            "keys": [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]],
            "groups": [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
                       if g["GroupName"] != "default"]}


# ---------------------------------------------------------------- 10. --ssh-user reaches a root script at boot


def test_a_shell_command_as_ssh_user_is_refused_before_anything_is_made(moto_server, tmp_path):
    before = account(moto_server)
    proc = tflab(*UP, "--name", "inj", "--ssh-user", "ubuntu; touch /tmp/x #", timeout=60, cwd=tmp_path,
                 env={"AWS_ENDPOINT_URL": moto_server, "TFLAB_HOME": str(tmp_path / "home")})
    assert_refused(proc, 3, "'ubuntu; touch /tmp/x #' is not a valid user name", "useradd")
    assert account(moto_server) == before
    assert not (tmp_path / "home" / "labs").exists()


@pytest.mark.parametrize("user", ["ubuntu; touch /tmp/x #", "", "-oProxyCommand=x", "Ubuntu", "a b", "$(id)",
                                  "ubuntu\n", "a" * 33, "1abc", "ünï"])
def test_bad_ssh_users_are_refused_before_any_aws_call(no_aws, user):
    proc = no_aws(*UP, "--name", "lab", "--ssh-user", user)
    assert_refused(proc, 3, "is not a valid user name for the lab host", "--ssh-user ubuntu")
    assert no_aws.wire.connections == 0


def test_the_boot_script_quotes_every_value(tmp_path):
    for user in ("_lab-user1", "root", "a" * 32):
        assert check_ssh_user(user) == user
    script = cloud.boot_user_data("_lab-user1", workdir="lab dir; touch x")
    (tmp_path / "ud.sh").write_text(script)
    checked = subprocess.run(["bash", "-n", str(tmp_path / "ud.sh")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    head, tail = script.split("\nTFLAB_BOOTSTRAP_SH_END\n", 1)  # the bootstrap, carried as a here-document
    lines, after = head.splitlines(), tail.splitlines()
    folder = "/home/_lab-user1/lab dir; touch x"
    assert shlex.split(lines[3])[:3] == ["cat", ">", f"{folder}/remote/bootstrap.sh"]  # cat > (quoted) path <<'END'
    assert shlex.split(after[0]) == ["chown", "-R", "_lab-user1:", folder]
    assert shlex.split(after[1])[:8] == ["sudo", "-u", "_lab-user1", "-H", "nohup", "bash",
                                        f"{folder}/remote/bootstrap.sh", folder]
    assert shlex.split(script.splitlines()[2]) == ["mkdir", "-p", f"{folder}/remote"]
    with pytest.raises(InputError, match="not a valid user name"):
        cloud.boot_user_data("ubuntu; reboot")


def test_up_with_an_odd_but_valid_user_boots_with_a_script_bash_reads(moto_server, tmp_path):
    env = {"AWS_ENDPOINT_URL": moto_server, "TFLAB_HOME": str(tmp_path / "home")}
    proc = tflab(*UP, "--name", "odd-user", "--ssh-user", "_lab-user1", "--json", timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_server)
    data = ec2.describe_instance_attribute(InstanceId=state["instance_id"], Attribute="userData")
    script = gzip.decompress(base64.b64decode(data["UserData"]["Value"])).decode()  # one gzip'd script
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "sudo -u _lab-user1 -H nohup bash /home/_lab-user1/tflab/remote/bootstrap.sh" in script
    down = tflab("down", "--name", "odd-user", "--yes", timeout=120, cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr


# ---------------------------------------------------------------- 11. a lab name ending in a newline


@pytest.mark.parametrize("name", ["nl\n", "lab\n\n", "\nlab", "Lab", "-lab", "a" * 32, "", "läb", "lab name"])
def test_bad_lab_names_are_refused(no_aws, name):
    with pytest.raises(InputError):
        check_name(name)
    proc = no_aws(*UP, "--name", name)
    assert_refused(proc, 3, "is not a valid lab name", "--name lab")
    assert no_aws.wire.connections == 0
    assert not (no_aws.home / "labs").exists()
    for command in (["status"], ["down", "--yes"]):
        assert_refused(no_aws(*command, "--name", name), 3, "is not a valid lab name")


def test_a_state_folder_named_with_a_newline_is_not_a_lab(tmp_path):
    store = StateStore(tmp_path)
    (tmp_path / "labs" / "lab\n").mkdir(parents=True)
    (tmp_path / "labs" / "lab\n" / "state.json").write_text('{"name": "lab\\n", "region": "us-west-2"}')
    assert store.all() == []


# ---------------------------------------------------------------- up's other options, before any AWS call


@pytest.mark.parametrize("args, fragment", [
    (["--ssh-port", "99999"], "--ssh-port 99999 is not a port"),
    (["--ssh-port", "0"], "--ssh-port 0 is not a port"),
    (["--ssh-host", ""], "--ssh-host: '' is not a host name or IP address"),
    (["--ssh-host", "a b"], "is not a host name or IP address"),
    (["--ssh-host", "-oProxyCommand=x"], "is not a host name or IP address"),
    (["--instance-type", ""], "--instance-type '' is not an instance type name"),
    (["--instance-type", "g4dn.xlarge; x"], "is not an instance type name"),
    (["--subnet-id", ""], "--subnet-id '' is not a subnet id"),
    (["--wait-timeout", "nan"], "--wait-timeout nan is not a number of seconds"),
    (["--ssh-timeout", "inf"], "--ssh-timeout inf is not a number of seconds"),
    (["--region", "a b"], "--region is 'a b', not an AWS region name"),
    (["--region", ""], "--region is '', not an AWS region name"),
    (["--profile", ""], "--profile is empty"),
])
def test_bad_up_options_are_refused_before_any_aws_call(no_aws, args, fragment):
    proc = no_aws(*UP, "--name", "lab", *args)
    assert_refused(proc, 3, fragment)
    assert no_aws.wire.connections == 0
    assert not (no_aws.home / "labs").exists()


@pytest.mark.parametrize("value, fragment", [("", "empty"), ("a b", "' '"), ("x" * 1012, "longer than 1011")])
def test_a_bad_ami_parameter_is_refused_before_any_aws_call(no_aws, value, fragment):
    up = [a for a in UP if a not in ("--ami-parameter", PARAMETER)]
    proc = no_aws(*up, "--name", "lab", "--ami-parameter", value)
    assert_refused(proc, 3, "is not an SSM parameter name", fragment)
    proc = no_aws(*up, "--name", "lab", "--ami", "")
    assert_refused(proc, 3, "--ami '' is not an image id")
    assert no_aws.wire.connections == 0


# ---------------------------------------------------------------- 13. numbers, regions, hosts, addresses


@pytest.mark.parametrize("value", ["1e39", "-1e39", "3.5e38", "nan", "inf", "-inf"])
def test_predict_refuses_values_float32_cannot_hold(value):
    proc = tflab("predict", "1", value, "--address", f"127.0.0.1:{ports.free_port()}", timeout=60)
    assert_refused(proc, 3, "is not a finite float32 value", "hint: give numbers")
    assert repr(float(value)) in proc.stderr.splitlines()[0]  # names the value


@pytest.mark.parametrize("args, fragment", [
    (["--address", "nohost"], "--address 'nohost' is not host:port"),
    (["--address", ":::"], "an IPv6 address needs brackets"),
    (["--address", ""], "--address '' is not host:port"),
    (["--address", "127.0.0.1:99999"], "has a bad port ('99999'"),
    (["--address", "127.0.0.1:-1"], "has a bad port ('-1'"),
    (["--address", "[::1"], "is not host:port"),
    (["--address", "127.0.0.1:1", "--timeout", "nan"], "--timeout nan is not a number of seconds"),
    (["--address", "127.0.0.1:1", "--version", "99999999999999999999"], "is not a model version"),
])
def test_predict_refuses_a_bad_address_or_option_in_one_line(args, fragment):
    proc = tflab("predict", "1", *args, timeout=60)
    assert_refused(proc, 3, fragment)


def test_predict_with_an_unknown_signature_says_where_the_signatures_are():
    import grpc

    from tflab.client import serving_apis

    apis = serving_apis()

    class Servicer(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # TF Serving's own answer to an unknown signature
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f'Serving signature name: "{request.model_spec.signature_name}" not found in signature def')

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        proc = tflab("predict", "1", "--address", f"127.0.0.1:{port}", "--signature", "../x", timeout=60)
    finally:
        server.stop(0)
    assert_refused(proc, 8, 'FAILED_PRECONDITION: Serving signature name: "../x" not found', "--signature",
                   "/v1/models/nn/metadata")


@pytest.mark.parametrize("command", [["list"], ["status"], ["down", "--yes"]])
def test_a_region_botocore_refuses_is_one_line(no_aws, command):
    assert_refused(no_aws(*command, "--region", "a b"), 3, "--region is 'a b', not an AWS region name")
    proc = no_aws(*command, env={"AWS_DEFAULT_REGION": "ü"})
    assert_refused(proc, 3, "'ü', not an AWS region name", "--region us-west-2")
    assert no_aws.wire.connections == 0


def test_a_malformed_endpoint_setting_is_one_line(no_aws):
    proc = no_aws("list", env={"AWS_ENDPOINT_URL": "not a url"})
    assert_refused(proc, 3, "Invalid endpoint: not a url", "AWS_ENDPOINT_URL")


@pytest.mark.parametrize("spec, fragment", [
    ("user@h:99999", "has a bad port ('99999'"),
    ("user@h:0", "has a bad port ('0'"),
    ("user@h:", "has an empty port"),
    ("me@[::1]:abc", "has a bad port ('abc'"),
    ("me@[::1", "is not user@[address]:port"),
    ("me@h h", "is not a host name or IP address"),
    ("me@h\nx", "is not a host name or IP address"),
    ("-oProxyCommand=x@h", "is not a user name"),
    ("me@", "names no host"),
    ("user@h:\u00b2", "has a bad port"),
])
def test_bad_hosts_are_refused(tmp_path, spec, fragment):
    with pytest.raises(InputError, match="--host"):
        parse_host(spec)
    proc = tflab("ssh", "--host", spec, "--", "true", cwd=tmp_path, timeout=60,
                 env={"TFLAB_HOME": str(tmp_path / "home")})
    assert_refused(proc, 3, fragment)


def test_good_hosts_still_parse():
    assert parse_host("ubuntu@10.0.0.5") == ("ubuntu", "10.0.0.5", 22)
    assert parse_host("me@[::1]:2200") == ("me", "::1", 2200)
    assert parse_host("first.last@lab.example.org:65535") == ("first.last", "lab.example.org", 65535)
    assert parse_host("::1") == ("ubuntu", "::1", 22)


@pytest.mark.parametrize("command", [["ssh", "--host", "", "--", "true"], ["tunnel", "--host", ""],
                                     ["ssh", "--host", " ", "--", "true"],
                                     ["ssh", "--host", "me@127.0.0.1:1", "--identity", "", "--", "true"]])
def test_an_empty_host_is_an_error_not_the_default_lab(tmp_path, command):
    proc = tflab(*command, cwd=tmp_path, timeout=60, env={"TFLAB_HOME": str(tmp_path / "home")})
    assert_refused(proc, 3, "is empty")


def test_run_lab_with_an_empty_host_is_an_error_not_the_default_lab(tmp_path):
    proc = tflab("run-lab", "--host", "", cwd=tmp_path, timeout=60, env={"TFLAB_HOME": str(tmp_path / "home")})
    assert_refused(proc, 3, "--host is empty")


# ---------------------------------------------------------------- the state home and its files


@pytest.mark.parametrize("content, fragment", [("[]", "a JSON list, not an object"), ("{", "damaged"),
                                               ('{"name": "lab", "region": 5}', "region is 5, not str"),
                                               ('{"name": "lab", "region": "r", "ssh_port": 0}', "ssh_port is 0"),
                                               ('{"name": "lab", "region": "r", "ssh_user": "a;b"}', "user name")])
def test_a_damaged_state_file_is_one_line(no_aws, content, fragment):
    folder = no_aws.home / "labs" / "lab"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(content)
    for command in (["status"], ["ssh", "--", "true"], ["ssh-config"]):
        assert_refused(no_aws(command[0], "--name", "lab", *command[1:]), 3, "the state file", fragment,
                       "`tflab down --name lab`")
    assert no_aws.wire.connections == 0


def test_an_unusable_state_home_is_one_line_before_any_aws_call(no_aws, tmp_path):
    (tmp_path / "a-file").write_text("")
    home = {"TFLAB_HOME": str(tmp_path / "a-file")}
    assert_refused(no_aws(*UP, "--name", "lab", env=home), 3, "cannot use", "TFLAB_HOME")
    assert_refused(no_aws("status", "--name", "lab", env=home), 3, "cannot use", "TFLAB_HOME")
    assert no_aws.wire.connections == 0


@pytest.mark.parametrize("command", [["ssh-config"], ["ssh", "--", "true"], ["tunnel"]])
def test_an_empty_name_is_refused_not_taken_for_the_default(no_aws, command):
    assert_refused(no_aws(command[0], "--name", "", *command[1:]), 3, "'' is not a valid lab name")


@pytest.mark.parametrize("args, fragment", [
    (["--hosts", "ubuntu@10.0.0.5"], "does not name at least two machines"),
    (["--hosts", "ubuntu@10.0.0.5,"], "does not name at least two machines"),
    (["--hosts", "ubuntu@10.0.0.5,ubuntu@10.0.0.5:22"], "names 'ubuntu@10.0.0.5:22' twice"),
    (["--hosts", "ubuntu@10.0.0.5,-oProxyCommand=x@10.0.0.6"], "is not a user name"),
    (["--hosts", "ubuntu@10.0.0.5,ubuntu@a b"], "is not a host name or IP address"),
    (["--hosts", ",".join(f"u@10.0.0.{i}" for i in range(17))], "names 17 machines; at most 16"),
    (["--hosts", "a@10.0.0.5,b@10.0.0.6", "--local"], "--hosts cannot be combined with --local or --host"),
    (["--hosts", "a@10.0.0.5,b@10.0.0.6", "--host", "c@10.0.0.7"], "--hosts cannot be combined"),
    (["--hosts", "a@10.0.0.5,b@10.0.0.6", "--workers", "3"], "--workers 3 with 2 machines"),
])
def test_bad_hosts_are_refused_before_any_connection(args, fragment, tmp_path):
    proc = tflab("run-lab", *args, "--out", str(tmp_path / "out"), timeout=60)
    assert_refused(proc, 3, fragment)
    assert not (tmp_path / "out").exists()
