# Run by tflab/ssh.py ended_with_channel (inline, with `sh -c`: it runs before remote/ is pushed).
# argv: $1 the command, $2 the shell that runs it.
#
# The remote side of every command tflab runs over SSH. The command runs in its own session and
# process group; a watcher reads the channel's stdin, which sshd closes when the channel closes:
# when the command has not finished by then (Ctrl-C or a signal here, a timeout, a dropped
# connection), its whole group gets SIGTERM, then SIGKILL. Without it, a remote command outlives
# the SSH session that started it (no pty, so sshd sends it no SIGHUP). The command itself reads
# no stdin, and runs under $2: sh for tflab's own commands, the login shell for a user's (as sshd
# would run it; a second bash started by sshd reads ~/.bashrc again, ~90 ms with pyenv's).
exec 3<&0
if command -v setsid >/dev/null 2>&1; then setsid "$2" -c "$1" </dev/null 3<&- &
else "$2" -c "$1" </dev/null 3<&- & fi
p=$!
( while read -r _ <&3; do :; done
  kill -TERM -"$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; sleep 3; kill -KILL -"$p" 2>/dev/null ) >/dev/null 2>&1 &
w=$!
exec 3<&-
wait "$p"; s=$?
kill "$w" 2>/dev/null
exit "$s"
