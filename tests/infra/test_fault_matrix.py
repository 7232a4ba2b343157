"""A fault at each AWS call of `up` in turn: afterwards the account holds nothing tagged with the lab."""

from __future__ import annotations

import pytest

from infra.errors import InfraError
from tflab import cloud
from tests.infra.conftest import up_lab


def test_a_fault_at_any_call_of_up_leaves_nothing_behind(aws):
    up_lab(aws)
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    aws.faults.calls.clear()
    up_lab(aws)
    calls = list(aws.faults.calls)
    assert {"CreateKeyPair", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "RunInstances"} <= set(calls)
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)

    outcomes = {}
    for index, operation in enumerate(calls):
        aws.faults.calls.clear()
        aws.faults.rules.clear()
        aws.faults.fail(code="UnauthorizedOperation", status=403, at_index=index)
        try:
            up_lab(aws)
            outcomes[f"{index}:{operation}"] = "tolerated"
            cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
        except InfraError as exc:
            outcomes[f"{index}:{operation}"] = type(exc).__name__
            assert aws.store.load("lab") is None and not aws.store.key_path("lab").exists(), operation
        assert aws.faults.calls[index] == operation  # the fault hit the call it was meant for
        left = aws.provider.leftovers("lab")
        assert left.empty, f"after a fault at {operation}: {left.describe()}"
    # Every call that creates something failed the whole `up`; only the quota look-up is optional.
    failed = {k.split(":")[1] for k, v in outcomes.items() if v != "tolerated"}
    assert {"CreateKeyPair", "CreateSecurityGroup", "RunInstances"} <= failed
    assert {k.split(":")[1] for k, v in outcomes.items() if v == "tolerated"} <= {"GetServiceQuota",
                                                                                   "GetConsoleOutput"}


def test_ctrl_c_during_up_leaves_what_down_cleans(aws):
    def interrupt(model, **kwargs):
        if model.name == "RunInstances":
            raise KeyboardInterrupt

    aws.session.events.register("before-call.ec2.RunInstances", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            up_lab(aws)
    finally:
        aws.session.events.unregister("before-call.ec2.RunInstances", interrupt)
    left = aws.provider.leftovers("lab")
    assert left.key_pairs and left.security_groups  # nothing removed behind the user's back
    assert "`tflab down --name lab` removes what was created" in aws.err.getvalue()
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert aws.provider.leftovers("lab").empty


def test_keep_on_failure_keeps_what_up_made(aws):
    aws.faults.fail("RunInstances", "UnauthorizedOperation", status=403)
    spec = aws.spec
    with pytest.raises(InfraError):
        cloud.up(aws.provider, aws.store, spec, aws.console, confirm=lambda q: True,
                 settings=cloud.UpSettings(host_key_timeout=0, ssh_wait=False, keep_on_failure=True))
    assert not aws.provider.leftovers("lab").empty
    assert "kept what it created (--keep-on-failure)" in aws.err.getvalue()
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert aws.provider.leftovers("lab").empty
