"""On the host, Connection.push() without SFTP (tflab/ssh.py): a tar stream on stdin -> each file written
beside its place and renamed over it, with its mode; member names stay under the folder (no absolute paths,
no ..). Run with `python3 -c` before remote/ is there; standard library only. argv: the folder."""
import os, sys, tarfile
root = sys.argv[1]
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
    for member in archive:
        name = os.path.normpath(member.name)
        if not member.isfile() or name.startswith(("/", "..")):
            sys.exit("refusing " + member.name)
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tflab-partial"
        with open(tmp, "wb") as f:
            f.write(archive.extractfile(member).read())
        os.chmod(tmp, member.mode & 0o7777)
        os.replace(tmp, path)
