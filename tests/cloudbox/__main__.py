"""`python -m tests.cloudbox`: start the EC2 in a box, print one JSON line once it is ready, run until
SIGINT or SIGTERM, then remove every container, network namespace, veth, mount and layer it made.

    {"env": {"AWS_ENDPOINT_URL": ..., "AWS_REGION": ..., ...}, "ami_parameter": "/aws/service/..."}

`env` is every environment variable a tflab command needs to use the box; `ami_parameter` is an SSM
parameter resolving to the box's image (tflab's default Deep Learning AMI parameter, so `tflab up` needs no
--ami-parameter). Progress goes to stderr. Needs root, systemd-nspawn and debootstrap (scripts/install.sh
--test installs them); the first run builds the image and the wheelhouse (minutes), later runs reuse them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

REGION = "us-west-2"


def missing() -> str | None:
    """Why the box cannot run here, or None."""
    import shutil

    if os.geteuid() != 0:
        return "the EC2 in a box needs root (network namespaces, overlay mounts, systemd-nspawn)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {package}; scripts/install.sh --test installs it)"
    import subprocess

    try:
        clock = subprocess.run(["unshare", "--time", "--boottime=-1", "true"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare --time cannot run ({exc})"
    if clock.returncode != 0:  # the instances' own clocks (box.own_clock): Linux 5.6+, util-linux 2.36+
        return f"no time namespace for the instances' clocks (unshare --time: {clock.stderr.strip()})"
    return None


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="cloudbox: %(message)s")
    log = logging.getLogger("cloudbox")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    why = missing()
    if why:
        log.error(why)
        return 3
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION,
                      MOTO_ENABLE_AMI_VALIDATION="true", MOTO_ENABLE_KEYPAIR_VALIDATION="true",
                      MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true")
    from infra.provider import DEFAULT_AMI_PARAMETER
    from tests.cloudbox import image
    from tests.cloudbox.box import Box, register_image

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    log.info("the image (debootstrap, cached in %s)", image.CACHE)
    root = image.image()
    log.info("the wheelhouse (pip download, cached)")
    wheels = image.wheelhouse(root)
    if stop.is_set():
        return 130
    with Box(root, wheels, REGION) as box:
        ami = register_image(box, DEFAULT_AMI_PARAMETER)
        env = {"AWS_ENDPOINT_URL": box.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        log.info("ready: moto at %s, image %s behind %s; instances on %s", box.endpoint, ami,
                 DEFAULT_AMI_PARAMETER, "198.51.100.0/24")
        print(json.dumps({"env": env, "ami_parameter": DEFAULT_AMI_PARAMETER}), flush=True)
        control = threading.Thread(target=_control, args=(box, stop), daemon=True)
        control.start()
        while not stop.wait(1.0):
            pass
        log.info("stopping: removing every container, network namespace, veth, mount and layer")
    log.info("stopped; nothing left")
    return 0


def _control(box, stop: threading.Event) -> None:
    """Lines on stdin, for tests' faults, each answered by one JSON line: `kill INSTANCE_ID` pulls an instance's
    plug; `mask-sshd` masks ssh.service in the layer of the next instance launched; `fail-user-data` makes the
    next instance's user data exit 1 on its second line (before the bootstrap and the watchdog). EOF does nothing."""
    for line in sys.stdin:
        words = line.split()
        if words == ["mask-sshd"]:
            box.mask_sshd_next = True
            print(json.dumps({"mask-sshd": "next launch"}), flush=True)
        elif words == ["fail-user-data"]:
            box.fail_user_data_next = True
            print(json.dumps({"fail-user-data": "next launch"}), flush=True)
        elif len(words) == 2 and words[0] == "kill":
            container = box.container(words[1])
            if container is not None:
                container.kill()
                print(json.dumps({"killed": words[1]}), flush=True)
            else:
                print(json.dumps({"error": f"no container {words[1]}"}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
