"""Where tflab keeps and finds things on this machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def remote_dir() -> Path:
    """The folder of the scripts that run on lab hosts (the repository's remote/)."""
    spec = importlib.util.find_spec("tflab_remote")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "remote"  # a source checkout, not installed



def remote_script(name: str) -> str:
    """The text of a host-side script in remote/ (run there with `python3 -c`: it is needed before remote/
    is pushed, or whatever state the pushed copy is in)."""
    return (remote_dir() / name).read_text()
