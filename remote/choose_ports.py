"""On the host, as run-lab chooses its services' ports there (tflab/sshhost.py SshHost.choose_ports runs it
with `python3 -c`): a port held by one of the lab's own services that still runs is kept; else the wanted
port when it is free there; else a free one. Also says which kernel and network namespace it runs in, so
that a host that is this machine is recognised. Standard library only.

argv: the wanted ports (JSON), the services folder, the ports to avoid (JSON). Prints one JSON line."""
import json, os, socket, sys
def network():
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip() + ":" + str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return ""
wanted, folder, avoid = json.loads(sys.argv[1]), sys.argv[2], set(json.loads(sys.argv[3]))
owners = {"serving": "model-server", "rest": "model-server"}
def alive(service):
    try:
        os.kill(int(open(os.path.join(folder, service + ".pid")).read()), 0)
        return True
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
def free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
def any_free(taken):
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    sys.exit("no free port")
try:
    previous = json.load(open(os.path.join(folder, "ports.json")))
except (OSError, ValueError):
    previous = {}
chosen = {}
for name, port in wanted.items():
    old = previous.get(name) if isinstance(previous, dict) else None
    if not port:  # not wanted (REST off)
        chosen[name] = 0
    elif isinstance(old, int) and old and old not in chosen.values() and old not in avoid and             alive(owners.get(name, name)):
        chosen[name] = old
    elif port and port not in chosen.values() and port not in avoid and free(port):
        chosen[name] = port
    else:
        chosen[name] = any_free(set(chosen.values()) | avoid)
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "ports.json.tmp"), "w") as f:  # the other names' ports stay recorded
    json.dump({**(previous if isinstance(previous, dict) else {}), **chosen}, f)
os.replace(os.path.join(folder, "ports.json.tmp"), os.path.join(folder, "ports.json"))
print(json.dumps({"ports": chosen, "network": network()}))
