"""SSH host key fingerprints from an instance's console output (cloud-init prints them)."""

from __future__ import annotations

import re

BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
END = "-----END SSH HOST KEY FINGERPRINTS-----"
# cloud-init's lines look like: "256 SHA256:abc...xyz root@ip-10-0-0-1 (ED25519)"
LINE = re.compile(r"(?P<bits>\d+)\s+(?P<fp>SHA256:[A-Za-z0-9+/=]+)\s+.*\((?P<type>[A-Z0-9-]+)\)\s*$")


def parse_fingerprints(console: str) -> dict[str, str]:
    """{key type (e.g. 'ED25519'): 'SHA256:...'} from the last fingerprint block, or {}."""
    if not console or BEGIN not in console:
        return {}
    block = console.rsplit(BEGIN, 1)[1].split(END, 1)[0]
    found = {}
    for raw in block.splitlines():
        # cloud-init prefixes each line with "ec2: " on the console
        m = LINE.search(raw.strip())
        if m:
            found[m.group("type")] = m.group("fp")
    return found
