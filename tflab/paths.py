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


def remote_module(name: str):
    """A standard-library module of remote/ imported here too (remote/choose_ports.py chooses this machine's
    ports the way it chooses a host's)."""
    import sys

    key = f"tflab_remote_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, remote_dir() / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]
