"""The EC2 in a box: moto answers EC2's API, and each instance is a booted systemd-nspawn container.

moto's EC2 backend is hooked (in this process only) so that:
- RunInstances boots one container per instance: an overlay root (the image as lowerdir, a layer of its
  own as upperdir), in a network namespace of its own joined to the box's bridge by a veth pair, with its
  public address (198.51.100.0/24, TEST-NET-2) and its private address (the one moto gave it in its
  subnet) on its eth0. cloud-init's NoCloud seed in the layer carries the user data exactly as it came
  in RunInstances (gzip and all) and meta-data with the instance id, the hostname and the key pair's
  public key. The instance is `pending` until the container starts, then `running`.
- StopInstances powers the container off (`stopping`, then `stopped`), keeping its layer; the public
  address goes, as on EC2 without an Elastic IP. StartInstances boots the same layer again with a new
  public address. TerminateInstances powers it off and removes the layer (`shutting-down`, `terminated`).
- A container that powers itself off (the watchdog's `shutdown -h now`) becomes `stopped`, or
  `terminated` when its InstanceInitiatedShutdownBehavior says so, with EC2's StateReason
  Client.InstanceInitiatedShutdown.
- Each boot is a boot: the container's clocks start at its power-on (a time namespace of its own, own_clock),
  so its uptime and boot time are the instance's, not this machine's.
- GetConsoleOutput returns the container's console (systemd-nspawn's output: cloud-init prints the SSH
  host key fingerprints there), its last 64 KiB as EC2 keeps, base64 as EC2 sends it.
Security groups are not enforced: every address on the box's bridge reaches every port.

Everything the box makes carries its prefixes (bridge BRIDGE, network namespaces NETNS_PREFIX + instance
id, veths VETH_PREFIX..., layers under STATE/<box id>/) and close() removes it all.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gzip
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("cloudbox")

BRIDGE = "tfbox0"
NETNS_PREFIX = "tfbox-"
VETH_PREFIX = "tfbv"
PUBLIC_NET = ipaddress.ip_network("198.51.100.0/24")  # TEST-NET-2 (RFC 5737): never routed anywhere
GATEWAY = ipaddress.ip_address("198.51.100.1")  # this machine, on the box's bridge
STATE = Path(os.environ.get("TFLAB_CLOUDBOX_STATE", "/var/tmp/tflab-cloudbox"))
CONSOLE_KEEP = 64 * 1024  # EC2: "only the most recent 64 KB of console output is available"
POWEROFF_TIMEOUT = 60.0

# EC2's instance state codes (DescribeInstances, InstanceState).
PENDING, RUNNING, SHUTTING_DOWN, TERMINATED, STOPPING, STOPPED = \
    ("pending", 0), ("running", 16), ("shutting-down", 32), ("terminated", 48), ("stopping", 64), ("stopped", 80)


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def own_clock() -> list[str]:
    """The command prefix that starts a container in a time namespace of its own whose boot is now: a container
    shares this machine's kernel, so without it /proc/uptime and /proc/stat's btime are this machine's, and an
    instance would be as old as the machine that runs the box (the watchdog's maximum lifetime counts from the
    boot: past it, every instance shut itself down at once). Linux's time namespaces (5.6+) offset
    CLOCK_MONOTONIC and CLOCK_BOOTTIME, and /proc/uptime and btime with them (time_namespaces(7)); util-linux's
    unshare sets the offsets and execs the command in it (no fork: the pid is the container's)."""
    boot, monotonic = time.clock_gettime(time.CLOCK_BOOTTIME), time.clock_gettime(time.CLOCK_MONOTONIC)
    return ["unshare", "--time", f"--boottime={-int(boot)}", f"--monotonic={-int(monotonic)}"]


def _parent_death_sigterm() -> None:  # in the child: SIGTERM (an orderly poweroff) when the box dies
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


class Spawner:
    """Starts the containers' processes from one thread that lives as long as the box: a parent-death signal
    is sent when the thread that forked the child ends, not the process."""

    def __init__(self) -> None:
        import queue

        self.jobs: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._serve, name="spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, done = self.jobs.get()
            try:
                done["result"] = job()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                done["error"] = exc
            done["event"].set()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        done = {"event": threading.Event()}
        self.jobs.put((lambda: subprocess.Popen(*args, **kwargs), done))
        done["event"].wait(60)
        if "error" in done:
            raise done["error"]
        return done["result"]


def _set_state(instance, state: tuple[str, int]) -> None:
    instance._state.name, instance._state.code = state


class Container:
    """One instance's container: its layer, network and systemd-nspawn process."""

    def __init__(self, box: "Box", instance) -> None:
        self.box, self.instance, self.id = box, instance, instance.id
        self.home = box.home / instance.id
        self.upper, self.work, self.merged = self.home / "upper", self.home / "work", self.home / "merged"
        self.console = self.home / "console.log"
        self.netns = NETNS_PREFIX + instance.id
        self.veth = VETH_PREFIX + instance.id.removeprefix("i-")[-11:]
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False  # the box asked it to power off
        self.lock = threading.RLock()
        self.public_ip: str | None = None
        self.booted_once = False
        self.mask_sshd = False  # a fault for tests: the layer's sshd masked before the first boot
        self.fail_user_data = False  # a fault for tests: the user data exits before it starts anything
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)

    # ---- the layer
    def mount(self) -> None:
        if os.path.ismount(self.merged):
            return
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.box.image},upperdir={self.upper},workdir={self.work}", str(self.merged))

    def unmount(self) -> None:
        # A killed container's own processes end a moment after nspawn (their init gets the parent-death
        # signal): until then the overlay is busy and they write into the layer.
        _wait_until_empty(self.home)
        if os.path.ismount(self.merged):
            if sh("umount", str(self.merged), check=False).returncode != 0:
                sh("umount", "-l", str(self.merged), check=False)

    def seed(self) -> None:
        """cloud-init's NoCloud seed: the user data as sent, and the instance's meta-data."""
        seed = self.merged / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        raw = self.instance.user_data
        data = base64.b64decode(raw.as_bytes()) if raw is not None else b""
        if self.fail_user_data:  # tflab's own script, failing on its second line (as a broken image's bash would)
            script = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            first, _, rest = script.partition(b"\n")
            data = first + b"\necho 'cloudbox fault: the user data fails before it starts anything' >&2; exit 1\n" + rest
        (seed / "user-data").write_bytes(data)
        hostname = "ip-" + self.instance.private_ip.replace(".", "-")
        meta = {"instance-id": self.id, "local-hostname": hostname}
        key = self.box.public_key(self.instance.key_name)
        if key:
            meta["public-keys"] = [key]
        (seed / "meta-data").write_text(json.dumps(meta, indent=1) + "\n")  # JSON is YAML
        # The box's network has no DNS server (EC2's would answer ip-a-b-c-d names): a resolver that fails at
        # once, not one that times out on this machine's server (unreachable from here).
        resolv = self.merged / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("# the EC2 in a box has no DNS server; /etc/hosts names this host (cloud-init)\n")

    # ---- the network
    def plug(self, public_ip: str) -> None:
        self.unplug()
        private = ipaddress.ip_interface(f"{self.instance.private_ip}/{self.box.private_prefix(self.instance)}")
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", self.veth, "master", BRIDGE, "up")
        ns = ("ip", "-n", self.netns)
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "addr", "add", f"{public_ip}/{PUBLIC_NET.prefixlen}", "dev", "eth0")
        sh(*ns, "addr", "add", str(private), "dev", "eth0")
        sh(*ns, "link", "set", "eth0", "up")
        sh(*ns, "route", "add", "default", "via", str(GATEWAY))
        self.public_ip = public_ip

    def unplug(self) -> None:
        sh("ip", "link", "del", self.veth, check=False)
        if Path("/run/netns", self.netns).exists():
            sh("ip", "netns", "del", self.netns, check=False)
        self.public_ip = None

    # ---- power
    def boot(self, public_ip: str) -> None:
        with self.lock:
            self.mount()
            if not self.booted_once and not (self.merged / "var/lib/cloud/seed/nocloud/meta-data").exists():
                self.seed()
                if self.mask_sshd:
                    unit = self.merged / "etc/systemd/system/ssh.service"
                    unit.unlink(missing_ok=True)
                    unit.symlink_to("/dev/null")
            self.plug(public_ip)
            self.expected_exit = False
            console = open(self.console, "ab")
            console.write(f"\n[cloudbox] {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} power on\n".encode())
            console.flush()
            uid = uuid.UUID(bytes=(self.id.encode() * 2)[:16])
            cmd = [*own_clock(), "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "-D", str(self.merged),
                   f"--machine={self.netns}", f"--uuid={uid}", "--link-journal=no", "--console=read-only",
                   f"--network-namespace-path=/run/netns/{self.netns}", "--timezone=off", "--resolv-conf=off",
                   f"--bind-ro={self.box.wheelhouse}:/var/cache/tflab-wheelhouse"]
            log.info("%s: booting (%s, public %s, private %s)", self.id, self.merged, public_ip,
                     self.instance.private_ip)
            self.proc = self.box.spawner.popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                         preexec_fn=_parent_death_sigterm)
            console.close()
            self.booted_once = True
            threading.Thread(target=self._watch, args=(self.proc,), name=f"watch-{self.id}", daemon=True).start()

    def _watch(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self.lock:
            if self.expected_exit or proc is not self.proc:
                return
            log.info("%s: the container powered itself off (exit %s)", self.id, code)
            self.proc = None
            self.unplug()
            self.unmount()
        self.box.instance_shut_itself_down(self)

    def power_off(self) -> None:
        """An orderly poweroff (nspawn's SIGTERM is SIGRTMIN+3 to the container's systemd), bounded."""
        with self.lock:
            self.expected_exit = True
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("%s: no poweroff in %.0f s; killed", self.id, POWEROFF_TIMEOUT)
                proc.kill()
                proc.wait(10)
        with self.lock:
            self.unplug()
            self.unmount()

    def kill(self) -> None:
        """Pull the plug (a test's fault: the instance dies mid-run); the box sees it as gone."""
        with self.lock:
            proc = self.proc
        if proc is not None:
            proc.kill()

    def remove(self) -> None:
        self.power_off()
        _remove_tree(self.home)

    def console_text(self) -> bytes:
        try:
            with open(self.console, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - CONSOLE_KEEP))
                return handle.read()
        except FileNotFoundError:
            return b""


class Box:
    """moto's EC2 with containers for instances. Use as a context manager; close() removes everything."""

    def __init__(self, image: Path, wheelhouse: Path, region: str = "us-west-2") -> None:
        self.image, self.wheelhouse, self.region = image, wheelhouse, region
        self.id = f"box-{os.getpid()}"
        self.home = STATE / self.id
        self.containers: dict[str, Container] = {}
        self.lock = threading.RLock()
        self._next_public = 10
        self.server = None
        self.endpoint = ""
        self.spawner = Spawner()
        self.mask_sshd_next = False  # a fault for tests: the next instances launched have sshd masked
        self.fail_user_data_next = False  # a fault for tests: the next instances' user data fails at once

    # ---- addresses
    def allocate_public(self) -> str:
        with self.lock:
            used = {c.public_ip for c in self.containers.values()}
            for _ in range(240):
                address = str(PUBLIC_NET.network_address + self._next_public)
                self._next_public = 10 + (self._next_public - 9) % 240  # .10 .. .249, round and round
                if address not in used:
                    return address
        raise RuntimeError("the box has no public address left")

    def private_prefix(self, instance) -> int:
        backend = instance.ec2_backend
        vpc = backend.get_vpc(backend.get_subnet(instance.subnet_id).vpc_id)
        return ipaddress.ip_network(vpc.cidr_block).prefixlen

    def public_key(self, key_name: str | None) -> str | None:
        if not key_name:
            return None
        from moto.ec2.models import ec2_backends

        for account in ec2_backends.values():
            pair = account[self.region].key_pairs.get(key_name)
            if pair is not None:
                return pair.public_key.strip()
        return None

    # ---- lifecycle hooks (called from moto's request threads)
    def launched(self, instance) -> None:
        container = Container(self, instance)
        with self.lock:
            self.containers[instance.id] = container
            container.mask_sshd, self.mask_sshd_next = self.mask_sshd_next, False
            container.fail_user_data, self.fail_user_data_next = self.fail_user_data_next, False
        self._power_on(container)

    def _power_on(self, container: Container) -> None:
        instance = container.instance
        address = self.allocate_public()
        instance.nics[0].public_ip = address  # DescribeInstances reports the box's address
        _set_state(instance, PENDING)

        def boot():
            try:
                container.boot(address)
                _set_state(instance, RUNNING)
            except Exception:  # noqa: BLE001 - the instance fails to start, as a broken VM would
                log.exception("%s: could not boot", instance.id)
                container.power_off()
                self._stopped(instance, "Server.InternalError", "Server.InternalError: Internal error on launch")
        threading.Thread(target=boot, name=f"boot-{instance.id}", daemon=True).start()

    def started(self, instance) -> None:
        container = self.containers.get(instance.id)
        if container is not None:
            self._power_on(container)

    def stopping(self, instance) -> None:
        container = self.containers.get(instance.id)
        if container is None:
            return
        _set_state(instance, STOPPING)
        reason, message = instance.state_reason.code, instance.state_reason.message

        def stop():
            container.power_off()
            self._stopped(instance, reason, message)
        threading.Thread(target=stop, name=f"stop-{instance.id}", daemon=True).start()

    def terminating(self, instance) -> None:
        with self.lock:
            container = self.containers.pop(instance.id, None)
        if container is None:
            return
        _set_state(instance, SHUTTING_DOWN)

        def remove():
            container.remove()
            _set_state(instance, TERMINATED)
        threading.Thread(target=remove, name=f"terminate-{instance.id}", daemon=True).start()

    def _stopped(self, instance, code: str, message: str) -> None:
        from moto.ec2.models.instances import StateReason

        for nic in instance.nics.values():
            nic.stop()
        nic = instance.nics[0]
        nic.public_ip = None
        instance.state_reason = StateReason(message, code)
        _set_state(instance, STOPPED)

    def instance_shut_itself_down(self, container: Container) -> None:
        """The OS powered off: EC2 stops or terminates the instance, per InstanceInitiatedShutdownBehavior."""
        from moto.ec2.models.instances import StateReason

        instance = container.instance
        code, message = "Client.InstanceInitiatedShutdown", "Client.InstanceInitiatedShutdown: Instance initiated shutdown"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        if instance.instance_initiated_shutdown_behavior == "terminate":
            instance.terminate()  # moto's bookkeeping (its network interfaces, volumes)
            with self.lock:
                self.containers.pop(instance.id, None)
            container.remove()
            instance.state_reason = StateReason(message, code)
            instance._reason = f"User initiated ({when})"
            _set_state(instance, TERMINATED)
        else:
            self._stopped(instance, code, message)
            instance._reason = f"User initiated ({when})"

    def console(self, instance_id: str) -> bytes:
        container = self.containers.get(instance_id)
        return container.console_text() if container else b""

    def container(self, instance_id: str) -> Container | None:
        return self.containers.get(instance_id)

    # ---- the box
    def __enter__(self) -> "Box":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        for gone in sweep_dead_boxes():
            log.info("removed what a box that died left: %s", gone)
        if Path("/sys/class/net", BRIDGE).exists():
            raise RuntimeError(f"the bridge {BRIDGE} exists already: another box runs here (or a dead one left it: "
                               f"`ip link del {BRIDGE}`)")
        self.home.mkdir(parents=True, exist_ok=True)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/{PUBLIC_NET.prefixlen}", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        install_hooks(self)
        from moto.server import ThreadedMotoServer

        from tests import moto_placement

        moto_placement.install()
        from tflab.ports import free_port

        port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        with self.lock:
            containers = list(self.containers.values())
            self.containers.clear()
        threads = [threading.Thread(target=c.remove, daemon=True) for c in containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(POWEROFF_TIMEOUT + 30)
        if self.server is not None:
            self.server.stop()
            self.server = None
        uninstall_hooks()
        if Path("/sys/class/net", BRIDGE).exists():
            sh("ip", "link", "del", BRIDGE, check=False)
        _remove_tree(self.home)


def _box_alive(home: Path) -> bool:
    pid = home.name.removeprefix("box-")
    try:
        return pid.isdigit() and b"tests.cloudbox" in Path("/proc", pid, "cmdline").read_bytes()
    except OSError:
        return False


def _wait_until_empty(home: Path, seconds: float = 30.0) -> None:
    """Wait, bounded, until no process has its root in home (a container's, still ending): until then they
    write into its layers, and a removal would leave files behind."""
    deadline = time.monotonic() + seconds
    while _processes_inside(home) and time.monotonic() < deadline:
        time.sleep(0.2)


def _remove_tree(home: Path) -> None:
    """Remove home, retried a few times (a file a last process wrote after the first pass)."""
    for _ in range(10):
        shutil.rmtree(home, ignore_errors=True)
        if not home.exists():
            return
        time.sleep(0.5)


def _processes_inside(home: Path) -> list[int]:
    """The processes whose root is in one of home's layers (a container's, still ending)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "root").startswith(str(home) + "/"):
                    found.append(int(proc.name))
    return found


def sweep_dead_boxes() -> list[str]:
    """Remove what a box killed without its cleanup (kill -9) left: its containers, mounts, network namespaces,
    veths and layers, found under STATE/box-<pid> of a process that is gone, and the bridge if no box lives."""
    removed = []
    homes = sorted(STATE.glob("box-*")) if STATE.exists() else []
    alive = [home for home in homes if _box_alive(home)]
    for home in homes:
        if home in alive:
            continue
        for proc in Path("/proc").iterdir():  # its containers (the parent-death signal powers them off; if not)
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if argv.startswith(b"systemd-nspawn") and str(home).encode() in argv:
                with contextlib.suppress(OSError):
                    os.kill(int(proc.name), signal.SIGKILL)
        _wait_until_empty(home)  # the containers' own processes end a moment after them
        for layer in (p for p in home.iterdir() if p.is_dir()):
            merged = layer / "merged"
            if os.path.ismount(merged):
                sh("umount", "-l", str(merged), check=False)
            sh("ip", "link", "del", VETH_PREFIX + layer.name.removeprefix("i-")[-11:], check=False)
            if Path("/run/netns", NETNS_PREFIX + layer.name).exists():
                sh("ip", "netns", "del", NETNS_PREFIX + layer.name, check=False)
        _remove_tree(home)
        removed.append(str(home))
    if not alive and Path("/sys/class/net", BRIDGE).exists():
        sh("ip", "link", "del", BRIDGE, check=False)
        removed.append(f"bridge {BRIDGE}")
    return removed


_HOOKED: dict = {}
BOX: Box | None = None


def install_hooks(box: Box) -> None:
    """Wrap moto's EC2 instance actions and GetConsoleOutput so they drive box's containers."""
    global BOX
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.responses.general import General

    BOX = box
    if _HOOKED:
        return
    original = {name: getattr(InstanceBackend, name) for name in
                ("run_instances", "start_instances", "stop_instances", "terminate_instances")}
    _HOOKED.update(original, get_console_output=General.get_console_output)

    def run_instances(self, *args, **kwargs):
        reservation = original["run_instances"](self, *args, **kwargs)
        for instance in reservation.instances:
            BOX.launched(instance)
        return reservation

    def start_instances(self, instance_ids):
        stopped = {i.id for i in self.get_multi_instances_by_id(instance_ids) if i.state == "stopped"}
        result = original["start_instances"](self, instance_ids)
        for instance, _ in result:
            if instance.id in stopped:
                BOX.started(instance)
        return result

    def stop_instances(self, instance_ids):
        running = {i.id for i in self.get_multi_instances_by_id(instance_ids) if i.state in ("running", "pending")}
        result = original["stop_instances"](self, instance_ids)
        for instance, _ in result:
            if instance.id in running:
                BOX.stopping(instance)
        return result

    def terminate_instances(self, instance_ids):
        result = original["terminate_instances"](self, instance_ids)
        for instance, _ in result:
            BOX.terminating(instance)
        return result

    def get_console_output(self):
        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
        output = BOX.console(instance.id)
        return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                             "Output": base64.b64encode(output).decode() if output else ""})

    InstanceBackend.run_instances = run_instances
    InstanceBackend.start_instances = start_instances
    InstanceBackend.stop_instances = stop_instances
    InstanceBackend.terminate_instances = terminate_instances
    General.get_console_output = get_console_output


def uninstall_hooks() -> None:
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.responses.general import General

    if not _HOOKED:
        return
    for name in ("run_instances", "start_instances", "stop_instances", "terminate_instances"):
        setattr(InstanceBackend, name, _HOOKED[name])
    General.get_console_output = _HOOKED["get_console_output"]
    _HOOKED.clear()


def register_image(box: Box, parameter: str) -> str:
    """The box's image as an AMI in moto, and the SSM parameter `parameter` resolving to it (added to moto's
    parameters as moto adds AWS's own public ones, which no account may put)."""
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import Parameter, ssm_backends
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][box.region]
    ami = ec2.register_image(name="tflab-cloudbox debian-bookworm (systemd-nspawn)",
                             description=f"the EC2 in a box's image {box.image}")
    ami.architecture, ami.root_device_name = "x86_64", "/dev/sda1"
    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][box.region]
    ssm._parameters[parameter].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=parameter, value=ami.id, parameter_type="String", description=None,
        allowed_pattern=None, keyid=None, last_modified_date=utcnow(), version=1, data_type="aws:ec2:image"))
    return ami.id


def leftovers(instance_ids: list[str] | None = None) -> dict[str, list[str]]:
    """What the box (or, with instance_ids, those instances) left on this machine: containers (systemd-nspawn
    processes over the box's layers), network namespaces, veths, the bridge, mounts and layers. Read from the
    system itself, not from the box's own bookkeeping."""
    def mine(text: str) -> bool:
        return instance_ids is None or any(i in text for i in instance_ids)

    found: dict[str, list[str]] = {"containers": [], "netns": [], "links": [], "mounts": [], "layers": []}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = " ".join(a.decode(errors="replace") for a in argv)
            if argv and argv[0].endswith(b"systemd-nspawn") and str(STATE) in text and mine(text):
                found["containers"].append(f"{proc.name}: {text[:160]}")
    netns = Path("/run/netns")
    found["netns"] = sorted(n.name for n in netns.iterdir() if n.name.startswith(NETNS_PREFIX) and mine(n.name)) \
        if netns.exists() else []
    short = [i.removeprefix("i-")[-11:] for i in instance_ids] if instance_ids is not None else None
    found["links"] = sorted(link.name for link in Path("/sys/class/net").iterdir()
                            if (link.name.startswith(VETH_PREFIX) and (short is None or link.name[len(VETH_PREFIX):]
                                                                          in short))
                            or (link.name == BRIDGE and instance_ids is None))
    found["mounts"] = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                       if line.split()[1].startswith(str(STATE)) and mine(line)]
    if STATE.exists():
        found["layers"] = sorted(str(p) for box in STATE.iterdir() for p in ([box] if instance_ids is None else
                                 [box / i for i in instance_ids if (box / i).exists()]))
    return found

