"""A lab's state file damaged in every way a disk, an editor or a hostile user can: one clear error naming the
file and what to do, never a traceback, never a hang; the other labs still load; delete removes whatever is there."""

from __future__ import annotations

import json
import os
import threading

import pytest

from tflab.state import MAX_STATE_BYTES, DamagedStateError, LabState, StateStore

GOOD = LabState(name="good", region="us-west-2", instance_id="i-0123456789abcdef0", instance_type="g4dn.xlarge")


def _valid(name: str) -> dict:
    return LabState(name=name, region="us-west-2", instance_id="i-0abc", instance_type="g4dn.xlarge").to_dict()


def deep(path):
    path.write_text("[" * 100_000 + "]" * 100_000)


def deep_in_a_field(path):
    path.write_text(json.dumps(_valid("bad") | {"nodes": []})[:-1] + ', "x": ' + "{\"a\": " * 50_000 + "1"
                    + "}" * 50_000 + "}")


def huge(path):
    path.write_text(json.dumps(_valid("bad") | {"workdir": "x" * (MAX_STATE_BYTES + 10)}))


def fifo(path):
    os.mkfifo(path)


def folder(path):
    path.mkdir()
    (path / "inside").write_text("{}")


def bad_json(path):
    path.write_text('{"name": "bad", "region": ')


def not_utf8(path):
    path.write_bytes(b'{"name": "bad\xff\xfe"}')


def a_list(path):
    path.write_text("[1, 2, 3]")


def wrong_types(path):
    path.write_text(json.dumps(_valid("bad") | {"ssh_port": "22; rm -rf /"}))


def infinite_price(path):
    path.write_text(json.dumps(_valid("bad"))[:-1] + ', "hourly_usd": 1e400}')


def nan_constant(path):
    path.write_text(json.dumps(_valid("bad"))[:-1] + ', "hourly_usd": NaN}')


def huge_int(path):
    path.write_text(json.dumps(_valid("bad"))[:-1] + ', "ssh_port": ' + "9" * 50_000 + "}")


def bad_node(path):
    path.write_text(json.dumps(_valid("bad") | {"nodes": [{"index": 5, "instance_id": "i-1"}]}))


def another_labs_state(path):
    path.write_text(json.dumps(_valid("other")))


def a_link(path):
    target = path.parent / "elsewhere.json"
    target.write_text(json.dumps(_valid("bad")))
    os.symlink(target, path)


DAMAGE = [deep, deep_in_a_field, huge, fifo, folder, bad_json, not_utf8, a_list, wrong_types, infinite_price,
          nan_constant, huge_int, bad_node, another_labs_state, a_link]


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "home")
    store.save(GOOD)
    (store.home / "labs" / "bad").mkdir(mode=0o700)
    return store


def load_bounded(store: StateStore, name: str):
    """store.load in a thread, joined with a limit: a FIFO must never block it."""
    outcome: dict = {}

    def run():
        try:
            outcome["state"] = store.load(name)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "load blocked"
    return outcome


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_state_file_is_one_clear_error_naming_the_file(store, damage):
    path = store.home / "labs" / "bad" / "state.json"
    damage(path)
    outcome = load_bounded(store, "bad")
    error = outcome.get("error")
    assert isinstance(error, DamagedStateError), outcome
    assert str(path) in error.message and error.message.startswith(f"the state file {path} is damaged: ")
    assert "\n" not in error.message and len(error.message) < 400
    assert "tflab down --name bad" in error.hint
    # The other lab is untouched and loads; the damaged one is listed as damaged, once.
    assert store.load("good") == GOOD
    assert [d.name for d in store.damaged()] == ["bad"]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_delete_removes_whatever_the_damage_left(store, damage):
    folder = store.home / "labs" / "bad"
    damage(folder / "state.json")
    (folder / "id_ed25519").write_text("key\n")
    store.delete("bad")
    assert not os.path.lexists(folder)
    assert store.load("good") == GOOD


def test_a_link_is_removed_not_followed(tmp_path):
    store = StateStore(tmp_path / "home")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (store.home / "labs").mkdir(parents=True)
    os.symlink(outside, store.home / "labs" / "bad")
    store.delete("bad")
    assert (outside / "precious").read_text() == "keep me"
    assert not os.path.lexists(store.home / "labs" / "bad")


def test_the_bounds_leave_room_for_a_real_lab_of_sixteen_nodes(tmp_path):
    store = StateStore(tmp_path / "home")
    prints = {"ED25519": "SHA256:" + "A" * 43, "ECDSA": "SHA256:" + "B" * 43, "RSA": "SHA256:" + "C" * 43}
    nodes = [{"index": i, "instance_id": f"i-{i:017x}", "public_ip": f"203.0.113.{i}", "private_ip": f"10.0.0.{i}",
              "zone": "us-west-2a", "host_key_fingerprints": prints} for i in range(16)]
    state = LabState(name="big", region="us-west-2", instance_id="i-00000000000000000", nodes=nodes,
                     host_key_fingerprints=prints, hourly_usd=0.526)
    store.save(state)
    assert store.load("big") == state


def test_a_fifo_as_the_lock_file_is_refused_without_blocking(tmp_path):
    from tflab.errors import InputError

    store = StateStore(tmp_path / "home")
    (store.home / "locks").mkdir(parents=True)
    os.mkfifo(store.home / "locks" / "lab.lock")
    outcome: dict = {}

    def run():
        try:
            with store.lock("lab"):
                outcome["held"] = True
        except InputError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "lock blocked on a FIFO"
    assert "is not a file" in outcome["error"].message and "held" not in outcome
