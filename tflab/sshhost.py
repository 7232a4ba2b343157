"""A lab host reached over SSH: the run-lab pipeline's Host for a lab made by `tflab up` and for
`--host`.

prepare: connect (host key verified; a lab may still be booting) -> push remote/ -> bootstrap (or
wait for the one started at boot) -> the Jupyter token. Its services are detached from SSH and kept
across runs; their ports are the lab's own where free on the host (remembered in
<workdir>/services/ports.json); tunnels bring them here. When the host shares this machine's
network (the same kernel and network namespace, whatever address reaches it), the tunnels' local
ports avoid the services' ports.
"""

from __future__ import annotations

import json
import logging
import posixpath
import secrets
import shlex
import time
from pathlib import Path
from typing import Callable

from tflab.host import PORT_NAMES, CommandResult, Host, Service
from tflab.paths import remote_dir, remote_script
from tflab.ports import LAB_PORTS
from tflab.ssh import Connection, wait_for_ssh
from tflab.tunnels import Forward, Tunnels, no_forwarding

log = logging.getLogger(__name__)


def this_network() -> str:
    """This machine's kernel boot and network namespace, as remote/choose_ports.py reports the host's."""
    from tflab.paths import remote_module

    return remote_module("choose_ports").network()


def command_line(argv: list[str], cwd: str | None = None, env: dict | None = None) -> str:
    """A POSIX shell command line for argv, run in cwd with env added."""
    parts = []
    if cwd:
        parts.append(f"cd {shlex.quote(cwd)} &&")
    if env:
        parts.append("env " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()))
    parts.append(" ".join(shlex.quote(a) for a in argv))
    return " ".join(parts)


class SshHost(Host):
    """A machine reached over SSH (see the module docstring)."""

    keeps_services = True

    def __init__(self, connection: Connection, *, workdir: str = "~/tflab", python: str | None = None,
                 ssh_timeout: float = 600.0, bootstrap_timeout: float = 3600.0, watchdog: str | None = None,
                 peer: str | None = None, booted: bool = False, alive: Callable[[], None] | None = None):
        self.connection = connection
        self._alive = alive  # raises while SSH is waited for, once waiting is vain (a lab's instance stopped)
        self._booted = booted  # a lab made by `up`: its user data starts the bootstrap at boot, in ~/tflab
        self._peer = peer  # the address the run's other hosts reach it at (a lab node's private address)
        self.watchdog = watchdog  # run-lab starts the idle watchdog with this action (remote/watchdog.py)
        self.name = connection.target.display
        self._want_python = python  # an interpreter that has everything; None: the bootstrap makes a venv
        self._python = python or "python3"
        self._workdir = workdir
        self.ssh_timeout = ssh_timeout
        self.bootstrap_timeout = bootstrap_timeout
        self.bootstrap_seconds: float | None = None
        self.marks: dict[str, float] = {}  # phase -> when it ended (time.monotonic())
        self.ports: dict[str, int] = {}
        self.tunnels: Tunnels | None = None
        self._same_network = False
        self._tied: dict[int, object] = {}  # pid -> the SSH channel its life is tied to

    @property
    def python(self) -> str:
        return self._python

    @property
    def workdir(self) -> str:
        return self._workdir

    @property
    def peer_address(self) -> str:
        """The node's given address (a lab node's private one), else the address its sshd was reached
        at, as the host sees it ($SSH_CONNECTION): the one the other hosts of a --hosts run share."""
        if self._peer is None:
            seen = self.connection.output('echo "$SSH_CONNECTION"').split()
            self._peer = seen[2] if len(seen) == 4 else self.connection.target.host
        return self._peer

    @property
    def remote_dir(self) -> str:
        return posixpath.join(self._workdir, "remote")

    # ------------------------------------------------------------------ the pipeline's steps

    def prepare(self, console) -> None:
        self._connect(console)
        if self._booted:
            self._check_boot_bootstrap(console)
        with console.waiting(f"pushing remote/ to {self.remote_dir}") as update:
            pushed = self.connection.push(remote_dir(), self.remote_dir, progress=update)
        if self.connection.no_sftp_note:
            console.note(self.connection.no_sftp_note)
        console.info(f"pushed {len(pushed['sent'])} files ({pushed['bytes']:,} bytes), {pushed['skipped']} unchanged")
        self.marks["push"] = time.monotonic()
        console.info("preparing the host (bootstrap; a second run skips what is done)")
        self.connection.run(shlex.join(["bash", posixpath.join(self.remote_dir, "bootstrap.sh"), self._workdir,
                                        self._want_python or ""]),
                            step="bootstrap", timeout=self.bootstrap_timeout,
                            on_line=lambda kind, line: console.stream("bootstrap", line.removeprefix("[bootstrap] ")))
        self._settle(console)
        self.marks["bootstrap"] = time.monotonic()
        self.bootstrap_seconds = self.marks["bootstrap"] - self.marks["push"]

    def attach(self, console) -> None:
        """Connect to a host run-lab prepared before, as it left it: nothing pushed, no bootstrap (its
        interpreter and serving kind are the ones that bootstrap recorded). Raises NotFoundError when
        run-lab never prepared the lab's workdir there."""
        from tflab.errors import NotFoundError

        self._connect(console)
        done = posixpath.join(self._workdir, "bootstrap.done")
        if self.connection.run(f"[ -f {shlex.quote(done)} ]", step="check", check=False, quick=True).status != 0:
            raise NotFoundError(f"run-lab has not prepared {self._workdir} on {self.name} yet",
                                hint="`tflab run-lab` runs the lab there first")
        self._settle(console)

    def _connect(self, console) -> None:
        target = self.connection.target
        with console.waiting(f"connecting to {target.display}") as update:
            self.connection = wait_for_ssh(target, timeout=self.ssh_timeout, progress=update, alive=self._alive)
        if self.connection.host_key_note:
            console.note(f"host key of {target.display} {self.connection.host_key_note}")
        self.marks["connect"] = time.monotonic()
        refused = self.connection.forwarding_refused(LAB_PORTS["serving"][0])
        if refused:  # said now, not after the bootstrap and the training, when the tunnels are first used
            raise no_forwarding(target.display, refused)
        self._workdir = self.connection.absolute(self._workdir)

    def _settle(self, console) -> None:
        """What every run reads or makes once the host is prepared: its interpreter and serving kind (as the
        bootstrap recorded them), Jupyter's token, and the idle watchdog."""
        self._python = self.read_text(posixpath.join(self._workdir, "python")).strip()
        self.serving = self.read_text(posixpath.join(self._workdir, "serving")).strip()
        self.jupyter_token_file = posixpath.join(self._workdir, "jupyter-token")
        # Made once; later runs keep the same token and URL.
        path = shlex.quote(self.jupyter_token_file)
        self.connection.run(f"umask 077; [ -s {path} ] || printf %s {secrets.token_hex(24)} > {path}",
                            step="jupyter token")
        if self.watchdog:
            self.start_watchdog(self.watchdog, console)

    def _check_boot_bootstrap(self, console) -> None:
        """Say it in one line when the user data did not start the bootstrap at boot (run-lab then runs it
        itself, from the start; the user data may not have installed the idle watchdog either): no trace of it
        (its lock, log or marker in ~/tflab) once cloud-init has finished (`cloud-init status --wait`, bounded),
        with what cloud-init says of the boot and the last line of the user data's output."""
        folder = '"$HOME"/tflab'
        trace = " || ".join(f"[ -e {folder}/bootstrap.{n} ]" for n in ("lock", "log", "done"))
        command = (f"if {trace}; then echo started; exit 0; fi; command -v cloud-init >/dev/null 2>&1 || "
                   f"{{ echo no-cloud-init; exit 0; }}; timeout 240 cloud-init status --wait >/dev/null 2>&1; "
                   f"if {trace}; then echo started; exit 0; fi; echo not-started; "
                   "cloud-init status --long 2>&1 | head -n 20; echo '--- output'; "
                   "{ sudo -n tail -n 20 /var/log/cloud-init-output.log || tail -n 20 /var/log/cloud-init-output.log; } "
                   "2>/dev/null | grep -v '^Cloud-init v\\. \\| - [a-z_]*\\.py\\[' | tail -n 3")
        with console.waiting("checking that the instance's user data started the bootstrap at boot"):
            lines = self.connection.output(command, timeout=300).splitlines()
        if not lines or lines[0] != "not-started":
            return
        status, _, output = "\n".join(lines[1:]).partition("--- output")
        said = dict(line.split(":", 1) for line in status.splitlines() if ":" in line and not line.startswith(" "))
        detail = " ".join(status.split("detail:", 1)[1].split()) if "detail:" in status else ""
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
        console.warn(f"the instance's user data did not start the bootstrap at boot (cloud-init: status "
                     f"{said.get('status', '?').strip()}{'; ' + detail[:200] if detail else ''}"
                     f"{'; its output ends: ' + last[:200] if last else ''}): run-lab runs it now (see "
                     "/var/log/cloud-init-output.log there; its idle watchdog may be missing too: `tflab autostop`)")

    def start_watchdog(self, action: str, console) -> None:
        """The idle watchdog as one of the lab's services (kept across runs), with the lab's default
        policy unless one was set (`tflab autostop`)."""
        from tflab.autostop import service_command

        # The port sshd listens on there (behind NAT or a forwarded port it differs from the one we reach).
        port = self.connection.output('echo "${SSH_CONNECTION##* }"').strip()
        argv, env = service_command(self.remote_dir, self._workdir, action,
                                    int(port) if port.isdigit() else self.connection.target.port)
        service = self.start_service("watchdog", argv, env=env,
                                     log_path=posixpath.join(self._workdir, "services", "watchdog.log"))
        if not service.kept:
            console.info(f"started the idle watchdog ({action} after an hour without activity; "
                         "`tflab autostop` shows and changes it)")

    def choose_ports(self, wanted: dict[str, int], console, avoid: frozenset[int] = frozenset()) -> dict[str, int]:
        script = remote_script("choose_ports.py")
        answer = json.loads(self.connection.output(
            f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(wanted))} "
            f"{shlex.quote(posixpath.join(self._workdir, 'services'))} {shlex.quote(json.dumps(sorted(avoid)))}"
        ).strip().splitlines()[-1])
        self.ports = {name: int(port) for name, port in answer["ports"].items()}
        self._same_network = bool(answer["network"]) and answer["network"] == this_network()
        for name, port in wanted.items():
            if port and self.ports[name] != port:
                console.note(f"port {port} ({PORT_NAMES.get(name, name)}) is taken on {self.name}; "
                             f"its service listens on {self.ports[name]}")
        return dict(self.ports)

    def forward(self, ports: dict[str, int], wanted_local: dict[str, int], console) -> None:
        # On this very machine the services' ports are taken here too: the tunnels go elsewhere.
        avoid = set(ports.values()) if self._same_network else set()
        self.tunnels = Tunnels(self.connection, [Forward(name, port, wanted_local.get(name, 0))
                                                 for name, port in ports.items() if port], avoid=avoid)
        self.tunnels.start(wait=False)  # the system's ssh logs in while the steps run
        for name, (wanted, got) in self.tunnels.moved.items():
            why = "the lab's own service there (the host is this machine)" if wanted in avoid else "another program"
            console.note(f"local port {wanted} ({name}) is taken by {why}; using {got} instead")

    def local_port(self, name: str) -> int:
        if "tunnels_ready" not in self.marks:  # first use: the forwards must be up now
            self.tunnels.ready()
            self.marks["tunnels_ready"] = time.monotonic()
        return self.tunnels.local_ports[name]

    def check_forwarding(self) -> None:
        if self.tunnels is not None:
            self.tunnels.check()

    @property
    def forwarding_alive(self) -> bool:
        return self.tunnels is not None and self.tunnels.alive

    def fetch(self, path: str, folder: Path) -> Path:
        return self.connection.fetch(path, Path(folder) / posixpath.basename(path))

    def facts(self) -> dict:
        gpus = self.connection.run("nvidia-smi -L 2>/dev/null || true", step="gpus", check=False).tail.strip()
        target = self.connection.target
        return {"address": f"{target.host}:{target.port}", "workdir": self._workdir, "serving": self.serving,
                "bootstrap_seconds": round(self.bootstrap_seconds or 0.0, 3),
                "tunnel_client": self.tunnels.client if self.tunnels else None,
                "gpus_nvidia_smi": [line for line in gpus.splitlines() if line.startswith("GPU")]}

    def phase_marks(self) -> dict[str, float]:
        return dict(self.marks)

    def close(self) -> None:
        for channel in self._tied.values():
            channel.close()
        self._tied.clear()
        if self.tunnels is not None:
            self.tunnels.stop()
            self.tunnels = None
        self.connection.close()

    # ------------------------------------------------------------------ commands and services

    def which(self, program: str) -> str | None:
        found = self.connection.output(f"command -v {shlex.quote(program)} || true").strip()
        return found.splitlines()[-1] if found else None

    def run(self, argv, *, step, cwd=None, env=None, on_line=None, timeout=600.0) -> CommandResult:
        return self.connection.run(command_line(argv, cwd, env), step=step, on_line=on_line, timeout=timeout)

    def start_service(self, name, argv, *, log_path, cwd=None, env=None, port=None, tied=False) -> Service:
        """Start argv detached from the SSH session (setsid, nohup): it outlives the connection.

        tied: instead, in a session of its own that ends it, its whole group, when the channel closes (this
        run stops it, tflab dies, or the connection drops: ssh.ended_with_channel); its pid file is written
        as for any service, and whether it runs is the channel's to say, with no command sent.

        The same command still running from an earlier run (its pid and command files next to the
        log) is kept: TensorFlow Serving and TensorBoard pick up new versions and logs by themselves.
        Kept only while its record's pid and start time are still /proc's (a pid reused since is not it).
        One kept without an identity record (started by an older tflab) gets one when /proc proves it is the
        service (remote/adopt_service.py); else that is logged in one line and the idle watchdog leaves it alone.
        Another command under the same name, or one that ended, is stopped first, if /proc proves its pid
        file's process is the service started (stop_services; a pid file naming another process now is
        removed, that process left alone).
        """
        base = posixpath.splitext(log_path)[0]
        pid_path, cmd_path = base + ".pid", base + ".cmd"
        folder = posixpath.dirname(log_path)
        inner = (f"cd {shlex.quote(cwd)} && " if cwd else "") + "exec " + command_line(argv, None, env)
        if tied:
            return self._start_tied(name, argv, inner, folder, pid_path, log_path, port)
        pid_q, cmd_q, id_q = shlex.quote(pid_path), shlex.quote(cmd_path), shlex.quote(base + ".id")
        command = (f"mkdir -p {shlex.quote(folder)} || exit 1; "
                   f"if [ -f {pid_q} ] && kill -0 $(cat {pid_q}) 2>/dev/null && "
                   f"[ \"$(cat {cmd_q} 2>/dev/null)\" = {shlex.quote(inner)} ] && {{ [ ! -f {id_q} ] || "
                   f"grep -qF \"\\\"pid\\\": $(cat {pid_q}), \\\"start\\\": $(sed 's/^.*) //' /proc/$(cat {pid_q})/stat "
                   f"2>/dev/null | cut -d' ' -f20),\" {id_q}; }}; then "
                   f"[ -f {shlex.quote(base + '.id')} ] || "
                   f"python3 -c {shlex.quote(remote_script('adopt_service.py'))} {pid_q} "
                   f"{shlex.quote(base + '.id')} {shlex.quote(json.dumps(argv))} 2>&1 | tail -n 1; "
                   f"echo kept $(cat {pid_q}); exit 0; fi; "
                   f"if [ -f {pid_q} ] && kill -0 $(cat {pid_q}) 2>/dev/null; then echo running $(cat {pid_q}); "
                   f"exit 0; fi; rm -f {pid_q} {shlex.quote(base + '.id')}; printf %s {shlex.quote(inner)} > {cmd_q}; "
                   f"nohup setsid sh -c {shlex.quote(inner)} "
                   f">>{shlex.quote(log_path)} 2>&1 </dev/null & echo $! > {pid_q}; "
                   f"{identity_record('$!', argv, base + '.id')}; echo started $(cat {pid_q})")
        lines = self.connection.output(command).strip().splitlines()
        what, pid = lines[-1].split(maxsplit=1)
        if what == "running":  # another command, or another process (a pid reused): stopped only if proved
            self.stop_services(folder, [posixpath.basename(base)], forget=True)
            lines = self.connection.output(command).strip().splitlines()
            what, pid = lines[-1].split(maxsplit=1)
            if what == "running":
                from tflab.errors import LabStepError

                raise LabStepError(f"starting {name}", f"{pid_path} on {self.name} names a process that still runs "
                                   f"(pid {pid[:20]}) and is not the one run-lab started",
                                   hint="see the warning above; stop that process or remove the pid file")
        if what == "kept":
            log.info("%s is running already (pid %s) with the same command: kept", name, pid)
            adopted = lines[-2] if len(lines) > 1 else "identity: recorded earlier"
            if adopted == "identity: recorded":
                log.info("%s (pid %s) was started without an identity record: /proc proves it is the "
                         "service, recorded in %s.id", name, pid, base)
            elif adopted != "identity: recorded earlier":
                log.warning("%s on %s (pid %s) has no identity record and none could be made (%s): the idle "
                            "watchdog will not stop it; `tflab down` or a run-lab that restarts it will",
                            name, self.name, pid, adopted.removeprefix("identity: not recorded: ")[:200])
        return Service(name, int(pid), log_path, port, kept=what == "kept")

    def _start_tied(self, name: str, argv: list[str], inner: str, folder: str, pid_path: str, log_path: str,
                    port: int | None) -> Service:
        from tflab.errors import UnreachableError
        from tflab.ssh import ended_with_channel

        q = shlex.quote
        script = (f"mkdir -p {q(folder)} && echo $$ > {q(pid_path)} && "
                  f"{identity_record('$$', argv, posixpath.splitext(pid_path)[0] + '.id')} && echo $$ && "
                  f"{{ {inner}; }} >>{q(log_path)} 2>&1")
        channel = self.connection.open_channel(name)
        self.connection.request(channel, f"starting {name}", lambda: channel.exec_command(ended_with_channel(script)))
        channel.settimeout(30)
        try:  # the pid of the session's shell, which then execs the command (the same pid)
            pid = int(channel.makefile("r").readline().strip())
        except (OSError, ValueError) as exc:
            channel.close()
            raise UnreachableError(f"{name} did not start on {self.name} ({exc or 'no pid'})",
                                   hint=f"look at {log_path} there") from exc
        channel.settimeout(None)
        self._tied[pid] = channel
        log.info("started %s (pid %d, tied to its SSH channel)", name, pid)
        return Service(name, pid, log_path, port)

    def service_alive(self, service: Service) -> bool:
        channel = self._tied.get(service.pid)
        if channel is not None:
            if channel.exit_status_ready():
                return False
            if not self.connection.transport.is_active():
                from tflab.errors import UnreachableError

                raise UnreachableError(f"the SSH connection to {self.name} dropped")
            return True
        return self.connection.run(f"kill -0 {service.pid} 2>/dev/null", step="check", check=False, timeout=60,
                                   quick=True).status == 0

    def stop_service(self, service: Service, timeout: float = 5.0) -> None:
        channel = self._tied.pop(service.pid, None)
        if channel is not None:
            channel.close()  # its watcher ends the group on the host too, should the command below fail
        base = posixpath.splitext(service.log_path)[0]
        self.stop_services(posixpath.dirname(base), [posixpath.basename(base)], timeout=timeout)

    def stop_all_services(self, folder: str, timeout: float = 5.0) -> dict:
        """Stop every service whose pid file is in folder (what earlier runs left on the host) and forget them."""
        return self.stop_services(folder, None, timeout=timeout, forget=True)

    def stop_services(self, folder: str, names: list[str] | None, *, timeout: float = 5.0,
                      forget: bool = False) -> dict:
        """Stop the services with a pid file in folder (those named, else all), each only when /proc proves it
        is the process that was started (its identity record: boot, pid, start time, owner, command), with the
        idle watchdog's own code (remote/watchdog.py stop, sent on stdin: the host's copy may be older). A pid
        file naming another process now (the pid reused since) or one with no record is never signalled:
        logged in one line. forget: the pid files and records are removed. Returns {"stopped", "ignored"}."""
        from tflab.errors import LabStepError

        argv = ["python3", "-", "stop", "--folder", folder, "--timeout", f"{timeout:g}"]
        for name in names or []:
            argv += ["--name", name]
        status, out, err = self.connection.exec_bytes(
            shlex.join(argv + (["--forget"] if forget else [])), stdin=(remote_dir() / "watchdog.py").read_bytes(),
            timeout=30 + 2 * timeout * (len(names) if names else 20))
        try:
            done = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
            stopped, ignored = list(done["stopped"]), list(done["ignored"])
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise LabStepError("stop", f"could not stop the services in {folder} on {self.name} (status {status})",
                               status=status, tail=err.decode(errors="replace")[-2000:]) from exc
        for what in stopped:
            log.info("stopped %s on %s", what, self.name)
        for what in ignored:
            log.warning("left alone on %s: %s/%s%s", self.name, folder, str(what)[:300],
                        " (its pid file removed)" if forget else "")
        return {"stopped": stopped, "ignored": ignored}

    def read_log(self, service: Service, lines: int = 20) -> str:
        return self.connection.output(f"tail -n {int(lines)} {shlex.quote(service.log_path)} 2>/dev/null || true")

    def read_text(self, path: str) -> str:
        return self.connection.read_text(path)


def identity_record(pid: str, argv: list[str], path: str) -> str:
    """Shell that records what identifies the service just started as pid (its boot, start time: /proc's stat
    field 22, owner and command) in path: the idle watchdog signals a pid only when /proc still says all that
    (remote/watchdog.py `service`), so a pid file left behind never makes it signal another process."""
    return (f"(p={pid}; s=$(sed 's/^.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f20); [ -n \"$s\" ] && "
            "printf '{\"pid\": %s, \"start\": %s, \"uid\": %s, \"boot\": \"%s\", \"argv\": %s}' \"$p\" \"$s\" "
            f"\"$(id -u)\" \"$(cat /proc/sys/kernel/random/boot_id)\" {shlex.quote(json.dumps(argv))} "
            f"> {shlex.quote(path)}; true)")
