"""On the host, for a service kept running that has no identity record (started by a tflab that wrote none):
the record tflab/sshhost.py identity_record() would have written, made only when /proc proves the pid file's
process is the service run-lab started: the command it would have started (after its exec), owned by this
user, in a session of its own (setsid), started as the pid file was written (not a pid reused since). Prints
one line. Run by SshHost with `python3 -c`; standard library only.

argv: the pid file, the identity record to write, the service's command (JSON)."""
import json, os, re, sys
pid_path, id_path, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def runs(cmdline):  # as remote/watchdog.py's runs(): argv after its exec (a #! script's interpreter first)
    n = len(argv) - 1
    return len(cmdline) > n and cmdline[len(cmdline) - n:] == argv[1:] and \
        os.path.basename(cmdline[-n - 1]) == os.path.basename(argv[0])
def prove():
    text = open(pid_path).read(64).strip()
    if not text.isdigit() or int(text) <= 1:
        return None, "the pid file says %r" % text[:20]
    pid = int(text)
    fields = open("/proc/%d/stat" % pid, "rb").read().rsplit(b")", 1)[1].split()
    cmdline = [a.decode(errors="replace") for a in open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[:-1]]
    uid = int(re.search(r"\nUid:\s*(\d+)", open("/proc/%d/status" % pid).read()).group(1))
    if fields[0] == b"Z":
        return None, "pid %d has ended" % pid
    if uid != os.getuid():
        return None, "pid %d belongs to another user (uid %d)" % (pid, uid)
    if not runs(cmdline):
        return None, "pid %d runs another command: %s" % (pid, " ".join(cmdline)[:100])
    if int(fields[2]) != pid or int(fields[3]) != pid:
        return None, "pid %d is not in a session of its own, as a service run-lab starts is" % pid
    btime = int(next(line.split()[1] for line in open("/proc/stat") if line.startswith("btime ")))
    started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    written = os.stat(pid_path).st_mtime
    if not written - 30 <= started <= written + 2:  # $! is written as soon as it is forked
        return None, "pid %d started %.0f s from when its pid file was written: not the process it names" % (
            pid, started - written)
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    return {"pid": pid, "start": int(fields[19]), "uid": uid, "boot": boot, "argv": argv}, ""
try:
    record, why = prove()
except (OSError, ValueError, AttributeError, StopIteration) as exc:
    record, why = None, "cannot read what /proc says of it (%s)" % exc
if record is None:
    print("identity: not recorded: " + why)
else:
    with open(id_path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(id_path + ".tmp", id_path)
    print("identity: recorded")
