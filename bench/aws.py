"""AWS API calls made by `tflab up` and `tflab down` (under moto), and `tflab status` next to
`aws ec2 describe-instances` doing the same look-up against the same moto server, in one run.

Goal (issue 3): status no slower than the AWS CLI. The call counts are compared with the
minimum the steps need.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, summary, time_command  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-west-2",
                  AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                  MOTO_ENABLE_AMI_VALIDATION="true", MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true")

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tflab import ports  # noqa: E402

# What each command cannot do without (one call per step).
MINIMUM = {
    "up": ["DescribeInstances (is there a lab?)", "GetParameter (AMI)", "DescribeImages (arch)",
           "DescribeInstanceTypes (vCPUs, arch)", "GetServiceQuota", "CreateKeyPair", "DescribeVpcs (default VPC)",
           "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "RunInstances", "DescribeInstances (running)"],
    "down": ["DescribeInstances", "TerminateInstances", "DescribeInstances (terminated)", "DescribeSecurityGroups",
             "DeleteSecurityGroup", "DescribeKeyPairs", "DeleteKeyPair", "4 x Describe* (check nothing is left)"],
}


def count_calls(session, fn) -> Counter:
    calls: Counter = Counter()
    session.events.register("before-call.*.*", lambda model, **kw: calls.update([model.name]))
    fn()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from infra.aws import AwsProvider
    from infra.provider import LaunchSpec
    from tflab import cloud
    from tflab.console import Console
    from tflab.state import StateStore

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    port = ports.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    home = tempfile.mkdtemp()
    os.environ["TFLAB_HOME"] = home
    try:
        session = boto3.Session(region_name="us-west-2")
        ssm = session.client("ssm")
        image = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
        ssm.put_parameter(Name="/bench/dlami", Value=image["Parameter"]["Value"], Type="String")
        provider = AwsProvider(session, poll=0.05)
        store, console = StateStore(home), Console(err=open(os.devnull, "w"))
        spec = LaunchSpec(lab="bench", ssh_cidr="203.0.113.7/32", ami_parameter="/bench/dlami")
        up_calls = count_calls(session, lambda: cloud.up(provider, store, spec, console, confirm=lambda q: True,
                                                         settings=cloud.UpSettings(ssh_wait=False, host_key_timeout=0)))
        print(f"# AWS API calls (moto server {endpoint})")
        print(f"tflab up:   {sum(up_calls.values())} calls, minimum {len(MINIMUM['up'])}: {dict(up_calls)}")
        state = store.load("bench")
        aws = shutil.which("aws")
        status = [PY, "-m", "tflab", "status", "--name", "bench", "--json", "--no-host"]  # moto's address is made up
        print(f"\n# look-up of the lab, {args.runs} runs, median [min-max]")
        print(f"tflab status --json                  {summary(time_command(status, args.runs))}")
        if aws:
            describe = [aws, "ec2", "describe-instances", "--filters", "Name=tag:tflab:lab,Values=bench"]
            print(f"aws ec2 describe-instances --filters {summary(time_command(describe, args.runs))}")
        else:
            print("aws CLI not installed: no comparison")
        session2 = boto3.Session(region_name="us-west-2")
        provider2 = AwsProvider(session2, poll=0.05)
        down_calls = count_calls(session2, lambda: cloud.down(provider2, store, "bench", console,
                                                              confirm=lambda q: True))
        print(f"\ntflab down: {sum(down_calls.values())} calls, minimum {len(MINIMUM['down']) + 3}: "
              f"{dict(down_calls)}")
        assert state is not None
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
