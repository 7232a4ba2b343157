"""The box's machine image and package mirror, built once and cached between runs.

- The image: a Debian bookworm root file system made by `debootstrap` (minbase plus systemd,
  openssh-server, cloud-init, python3, python3-venv, sudo), configured as a cloud image is: cloud-init's
  NoCloud data source, the default user `ubuntu` with passwordless sudo (as on the Deep Learning AMI),
  no SSH host keys (cloud-init makes each instance's own at first boot and prints their fingerprints on
  the console), no machine id. Cached under CACHE/image-<hash of the recipe>/rootfs: a change of the
  recipe below builds a new one.
- The wheelhouse: what remote/bootstrap.sh installs, downloaded once with `pip download` on this machine
  (PyPI is reachable here, not from the containers). Each container sees it read-only at WHEELHOUSE_MOUNT
  and the image's /etc/pip.conf points pip at it (find-links, no index): the box's "company mirror".
  tflab does not know about it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("cloudbox")

CACHE = Path(os.environ.get("TFLAB_CLOUDBOX_CACHE", "/var/cache/tflab-cloudbox"))
WHEELHOUSE_MOUNT = "/var/cache/tflab-wheelhouse"  # inside the containers

SUITE = "bookworm"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "openssh-sftp-server", "python3", "python3-venv",
    "cloud-init", "python3-cffi-backend",  # cloud-init's python3-cryptography needs it named (debootstrap)
    "sudo", "iproute2", "procps", "ca-certificates", "less", "bsdextrautils",
]
# What the bootstrap installs (remote/bootstrap.sh's PACKAGES, TensorFlow, pip itself for its upgrade).
WHEELS = ["pip", "setuptools", "wheel", "tensorflow", "tensorboard", "jupyterlab", "grpcio",
          "tensorflow-serving-api", "matplotlib", "numpy"]

CLOUD_CFG = """\
# The EC2 in a box: the NoCloud data source (the box writes its seed into each instance's layer),
# and the Deep Learning AMI's default user.
datasource_list: [NoCloud, None]
network: {config: disabled}
# The VPC's DNS resolves ip-a-b-c-d names on EC2; the box has no DNS: /etc/hosts names the host (sudo asks).
manage_etc_hosts: true
locale: C.UTF-8
system_info:
  default_user:
    name: ubuntu
    lock_passwd: true
    gecos: Ubuntu
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""
PIP_CONF = f"""\
# The box's package mirror: a wheelhouse bind-mounted read-only by the box.
[global]
no-index = true
find-links = {WHEELHOUSE_MOUNT}
disable-pip-version-check = true
"""
FILES = {
    "etc/cloud/cloud.cfg.d/90_tflab_box.cfg": CLOUD_CFG,
    "etc/pip.conf": PIP_CONF,
    "etc/hostname": "localhost\n",
}
RECIPE_VERSION = 1


def recipe_hash() -> str:
    recipe = {"suite": SUITE, "packages": PACKAGES, "files": FILES, "version": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 sources or sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for block in sources.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        m = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", legacy.read_text(), re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], timeout: float, **kwargs) -> None:
    log.info("+ %s", " ".join(cmd))
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stdout[-3000:]}")


def image() -> Path:
    """The image's root file system, built when its recipe is not cached yet (a few minutes)."""
    home = CACHE / f"image-{recipe_hash()}"
    root = home / "rootfs"
    with _locked(CACHE / "image.lock"):
        if (home / "done").exists():
            return root
        shutil.rmtree(home, ignore_errors=True)
        building = home / "rootfs.tmp"
        building.mkdir(parents=True)
        source = mirror()
        log.info("building the box image with debootstrap from %s (a few minutes, once)", source)
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        _run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={','.join(PACKAGES)}", SUITE, str(building), source],
             timeout=1800)
        for relative, text in FILES.items():
            target = building / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for key in (building / "etc/ssh").glob("ssh_host_*"):  # each instance makes its own at first boot
            key.unlink()
        (building / "etc/machine-id").write_text("")  # systemd makes one per boot in the container
        with contextlib.suppress(FileNotFoundError):
            (building / "var/lib/dbus/machine-id").unlink()
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        building.rename(root)
        (home / "done").write_text(json.dumps({"mirror": source, "packages": PACKAGES}) + "\n")
        for old in CACHE.glob("image-*"):  # earlier recipes
            if old != home:
                shutil.rmtree(old, ignore_errors=True)
        return root


def image_python(root: Path) -> str:
    """The version of the image's python3 (e.g. 3.11.2), from its dpkg status."""
    status = (root / "var/lib/dpkg/status").read_text()
    m = re.search(r"^Package: python3\.\d+-minimal\n(?:[^\n]+\n)*?Version: (\d+\.\d+\.\d+)", status, re.M)
    if not m:
        raise RuntimeError(f"no python3 in the image {root}")
    return m.group(1)


def platforms(glibc_minor: int = 36) -> list[str]:
    """pip's --platform options for a glibc 2.<minor> x86-64 system (bookworm: 2.36): each manylinux tag it runs
    (pip matches a given platform exactly, it does not add the older ones)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def wheelhouse(root: Path) -> Path:
    """A folder of wheels that holds everything remote/bootstrap.sh installs, for the image's Python (pip
    download, once: wheels only, for that exact version, so that pip in the image finds what fits it)."""
    python = image_python(root)
    home = CACHE / f"wheelhouse-{python}"
    stamp = home / ".wheels.json"
    with _locked(CACHE / "wheelhouse.lock"):
        if stamp.exists() and json.loads(stamp.read_text()) == WHEELS:
            return home
        home.mkdir(parents=True, exist_ok=True)
        log.info("downloading the wheelhouse for Python %s (%s) with pip, once", python, " ".join(WHEELS))
        _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(home),
              "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              *platforms(), *WHEELS], timeout=3600)
        stamp.write_text(json.dumps(WHEELS))
        for old in CACHE.glob("wheelhouse-*"):
            if old != home:
                shutil.rmtree(old, ignore_errors=True)
        return home
