"""tflab's typed errors and exit codes: one place decides how a failure reaches the user.

Library code raises these (chained with `from`); only the CLI turns them into a one-line
`tflab: error: ...` message with a hint, and an exit code from ExitCode.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The documented exit codes of every tflab command."""

    OK = 0
    FAILURE = 1  # an unexpected error (a bug: please report it)
    USAGE = 2  # bad command line (unknown option, bad value)
    INPUT = 3  # bad input or local setup: a path, a taken port, missing credentials
    CLOUD = 4  # the cloud refused: quota, capacity, permission
    UNREACHABLE = 5  # a host or server did not answer, or not in time
    LAB_FAILED = 6  # a lab step failed on the host
    NOT_FOUND = 7  # no such lab, model or version
    REQUEST = 8  # a server answered a request with an error
    HOST_KEY = 9  # an SSH host key is unknown, changed or revoked: possible interception, never retried
    INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGTERM exits 143 and SIGHUP 129: 128 + the signal's number


class TflabError(Exception):
    """An expected failure, with a message for the user and a hint on what to do next."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(TflabError):
    """The user's input or local setup cannot work as given."""

    exit_code = ExitCode.INPUT


class PortInUseError(InputError):
    """A local port that must be used as given is taken."""

    def __init__(self, port: int, what: str, option: str):
        super().__init__(f"port {port} for {what} is already in use on 127.0.0.1",
                         hint=f"stop what listens there, or choose another port with {option}")
        self.port = port


class UnreachableError(TflabError):
    """A host or server did not answer, or did not become ready in time."""

    exit_code = ExitCode.UNREACHABLE


class InstanceStopped(UnreachableError):
    """The lab's instance stopped (or ended) while tflab waited for it."""


class NotFoundError(TflabError):
    """What was asked for does not exist."""

    exit_code = ExitCode.NOT_FOUND


class RequestError(TflabError):
    """A server answered a request with an error status."""

    exit_code = ExitCode.REQUEST

    def __init__(self, message: str, hint: str | None = None, code: str = ""):
        super().__init__(message, hint)
        self.code = code


class LabStepError(TflabError):
    """A lab step failed; carries the command, its exit status and the tail of its output."""

    exit_code = ExitCode.LAB_FAILED

    def __init__(self, step: str, message: str, *, status: int | None = None, tail: str = "",
                 hint: str | None = None):
        super().__init__(f"{step}: {message}", hint)
        self.step = step
        self.status = status
        self.tail = tail


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of any expected failure: tflab's own, or the cloud layer's."""
    if isinstance(exc, TflabError):
        return exc.exit_code
    from infra import errors as infra

    table = [(infra.CredentialsError, ExitCode.INPUT), (infra.InputError, ExitCode.INPUT),
             (infra.WaitTimeout, ExitCode.UNREACHABLE), (infra.InfraError, ExitCode.CLOUD)]
    for cls, code in table:
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILURE
