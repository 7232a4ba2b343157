"""A fault at each AWS call of `up` in turn: afterwards the account holds nothing tagged with the lab."""

from __future__ import annotations

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
