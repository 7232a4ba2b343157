"""Choosing the lab's ports on a host, and claiming them until they are bound. Standard library only.

As a script, on the host, as run-lab chooses its services' ports there (tflab/sshhost.py SshHost.choose_ports runs
it with `python3 -c`): a port held by one of the lab's own services that still runs is kept; else the wanted port
when it is free there; else a free one. Also says which kernel and network namespace it runs in, so that a host
that is this machine is recognised. argv: the wanted ports (JSON; 0: not wanted), the services folder, the ports
to avoid (JSON). Prints one JSON line. Imported, on this machine (tflab/ports.py), it chooses the local ports the
same way.

A port found free is not yet bound: the model server opens its ports after its first model loaded, that is after
the training. Two labs on one machine (any users) choosing in that window would both take the same free port, and
one lab's readiness check would answer from the other lab's server. So every choice is claimed, in
/tmp/tflab-port-claims/ (one file per claimant), under a lock there, and other labs' live claims count as taken.
A claim lives as long as its claimant: the SSH session the lab's commands come through (the run-lab that started
the services), or the tflab process on this machine. A claim is only ever a reason to choose another port: when
the claims cannot be read or written (or the lock is held too long) the choice is made without them."""
import fcntl
import json
import os
import socket
import stat
import sys
import time

CLAIMS = "/tmp/tflab-port-claims"
MAX_CLAIM_FILES = 512  # beyond that the folder is not ours to trust; claims of other users are never removed here
MAX_CLAIM_BYTES = 16384
LOCK_SECONDS = 10.0
SERVICE_OF = {"serving": "model-server", "rest": "model-server"}


def network():
    """This kernel's boot and network namespace: the same on two hosts only when they are one machine."""
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip() + ":" + str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return ""


def proc_stat(pid):
    """/proc/<pid>/stat read as (its command name, the fields after it: state, ppid, ...); OSError when it cannot
    be read, ValueError when it is not such a line."""
    with open(f"/proc/{pid}/stat") as f:
        head, paren, rest = f.read().rpartition(")")
    if not paren:
        raise ValueError(f"/proc/{pid}/stat has no command name")
    return head.partition("(")[2], rest.split()


def started(pid):
    """The start time of pid (/proc's stat field 22), "" when /proc does not say, None when it does not run."""
    try:
        return proc_stat(pid)[1][19]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except PermissionError:
            return ""
        except OSError:
            return None
        return ""


def session_process():
    """The process whose life the claims of this process last: the sshd process of the SSH session it runs in
    (sshd, or sshd-session since OpenSSH 9.8), else this process."""
    pid = os.getpid()
    for _ in range(16):
        try:
            comm, fields = proc_stat(pid)
            parent = int(fields[1])
        except (OSError, ValueError, IndexError):
            break
        if comm in ("sshd", "sshd-session"):
            return pid
        if parent <= 1:
            break
        pid = parent
    return os.getpid()


def free(port, host="127.0.0.1"):
    """Whether a server can bind host:port now (SO_REUSEADDR, as servers set it: TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def any_free(taken, host="127.0.0.1"):
    """A port the system gives, not in taken (None after 50 tries)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    return None


class Claims:
    """The ports that live claimants (other than ours) hold, read and written under the folder's lock."""

    def __init__(self, claimant, folder=CLAIMS):
        self.folder, self.claimant, self.uid = folder, claimant, os.getuid()
        self.name = f"{self.uid}.{claimant}.{started(claimant) or 0}.json"
        self.lock = None
        self.mine = []

    def __enter__(self):
        try:
            self._open_folder()
            lock = os.path.join(self.folder, "lock")
            try:  # opened as it is when it exists: O_CREAT on another user's file in a sticky folder is refused
                self.lock = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)  # (fs.protected_regular)
            except FileNotFoundError:
                self.lock = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            deadline = time.monotonic() + LOCK_SECONDS
            while True:
                try:
                    fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except OSError:
            self._unlock()
            self.folder = None  # no claims this time: the choice is made as if there were none
        return self

    def __exit__(self, *exc):
        self._unlock()

    def _unlock(self):
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def _open_folder(self):
        try:
            os.mkdir(self.folder, 0o1777)
            os.chmod(self.folder, 0o1777)  # past the umask: every user's labs claim here
        except FileExistsError:
            pass
        info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode) or (info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX):
            raise PermissionError(f"{self.folder} is not a folder others cannot empty")

    def taken(self):
        """The ports claimed by other live claimants; our own file's ports are self.mine. A file of ours whose
        claimant ended is removed."""
        if self.folder is None:
            return set()
        ports = set()
        try:
            names = sorted(os.listdir(self.folder))[:MAX_CLAIM_FILES]
        except OSError:
            return ports
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.folder, name)
            try:
                uid, pid, start = name[:-5].split(".")
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd) as f:
                    claimed = json.loads(f.read(MAX_CLAIM_BYTES + 1)[:MAX_CLAIM_BYTES])
                alive = started(int(pid))
                claimed = [int(p) for p in claimed["ports"]][:256]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if alive is None or (alive and start != "0" and alive != start):
                if int(uid) == self.uid:
                    try:
                        os.unlink(path)  # its claimant ended: so did its claim
                    except OSError:
                        pass
                continue
            if name == self.name:
                self.mine = claimed
            else:
                ports.update(claimed)
        return ports

    def claim(self, ports):
        """Add ports to our claimant's claims."""
        if self.folder is None:
            return
        mine = list(dict.fromkeys(self.mine + [p for p in ports if p]))[-256:]
        path = os.path.join(self.folder, self.name)
        part = f"{path}.{os.getpid()}.part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump({"ports": mine}, f)
            os.replace(part, path)
            self.mine = mine
        except OSError:
            try:
                os.unlink(part)
            except OSError:
                pass


def choose(wanted, avoid=(), *, claimant=None, keep=None, host="127.0.0.1", folder=CLAIMS):
    """{name: port} for wanted {name: port}: keep(name) when it gives a port (a port of the lab's own running
    service); else the wanted port (0: any) when it is free, not in avoid and not claimed by another lab; else one
    the system gives, with the same conditions. The chosen ports are claimed for claimant (a pid,
    default this process's SSH session). Raises OSError when no port is free."""
    with Claims(session_process() if claimant is None else claimant, folder) as claims:
        claimed = claims.taken()
        chosen = {}
        for name, port in wanted.items():
            taken = set(chosen.values()) | set(avoid)
            kept = keep(name) if keep is not None else None
            if kept and kept not in taken:
                chosen[name] = kept
            elif port and port not in taken and port not in claimed and free(port, host):
                chosen[name] = port
            else:  # claims never make a choice fail: a claimed port is the last resort, as it was without them
                chosen[name] = any_free(taken | claimed, host) or any_free(taken, host)
                if chosen[name] is None:
                    raise OSError("no free port")
        claims.claim(list(chosen.values()))
    return chosen


def main(argv):
    wanted, folder, avoid = json.loads(argv[0]), argv[1], set(json.loads(argv[2]))
    try:
        previous = json.load(open(os.path.join(folder, "ports.json")))
    except (OSError, ValueError):
        previous = {}
    previous = previous if isinstance(previous, dict) else {}

    def alive(service):
        try:
            os.kill(int(open(os.path.join(folder, service + ".pid")).read()), 0)
            return True
        except PermissionError:
            return True
        except (OSError, ValueError):
            return False

    def keep(name):
        old = previous.get(name)
        return old if isinstance(old, int) and old > 0 and alive(SERVICE_OF.get(name, name)) else None

    try:
        chosen = choose({name: port for name, port in wanted.items() if port}, avoid, keep=keep)
    except OSError as exc:
        sys.exit(str(exc))
    chosen = {name: chosen.get(name, 0) for name in wanted}  # 0: not wanted (REST off)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "ports.json.tmp"), "w") as f:  # the other names' ports stay recorded
        json.dump({**previous, **chosen}, f)
    os.replace(os.path.join(folder, "ports.json.tmp"), os.path.join(folder, "ports.json"))
    print(json.dumps({"ports": chosen, "network": network()}))


if __name__ == "__main__":
    main(sys.argv[1:])
