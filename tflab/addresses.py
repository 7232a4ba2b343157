"""Host names and IP addresses given on the command line, checked before anything connects."""

from __future__ import annotations

import re

from tflab.errors import InputError

# A host name (RFC 1123 letters, digits, dots and dashes; "_" as some internal names have), an IPv4
# address, or an IPv6 one (colons, and "%" before a zone). Never a leading "-": ssh would read an option.
ADDRESS = re.compile(r"[A-Za-z0-9_.:%-]{1,253}")


def check_address(address: str, what: str = "the address") -> str:
    """A host name or IP address to connect to; an InputError for anything else (spaces, a newline,
    a leading '-', a path...)."""
    if not ADDRESS.fullmatch(address or "") or address.startswith("-"):
        raise InputError(f"{what}: {address!r} is not a host name or IP address",
                         hint="give a host name such as lab.example.org, or an address such as 203.0.113.7")
    return address
