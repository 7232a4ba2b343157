"""On the host, before Connection.push() (tflab/ssh.py) sends what changed: each file under the folder as
`<sha256> <1 if executable else 0> <relative path>`, one a line. Run with `python3 -c` before remote/ is
there; standard library only. argv: the folder."""
import hashlib, os, sys
root = sys.argv[1]
for base, dirs, files in os.walk(root):
    for name in files:
        p = os.path.join(base, name)
        h = hashlib.sha256(open(p, 'rb').read()).hexdigest()
        print(h, int(os.access(p, os.X_OK) and os.stat(p).st_mode & 0o111 != 0), os.path.relpath(p, root))
