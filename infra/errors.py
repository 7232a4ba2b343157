"""Typed cloud errors with fields, each with a hint saying what to do next.

tflab maps each class to an exit code in one place (tflab/errors.py); this layer only raises.
"""

from __future__ import annotations


class InfraError(Exception):
    """A cloud operation failed in a way the user can act on."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def with_hint(self, hint: str) -> "InfraError":
        """The same error with another hint (a case its class's own hint does not fit)."""
        self.hint = hint
        return self


class CredentialsError(InfraError):
    """No credentials, or expired or invalid ones, or no region."""


class PermissionDenied(InfraError):
    """The credentials may not perform an action: the one AWS named in its message, else the call's own.

    explicit: AWS said "with an explicit deny" (a Deny statement, a permissions boundary, or an
    organisation's service control policy): granting the permission in the user's own policy does not
    help, only whoever wrote the deny can lift it.
    """

    def __init__(self, action: str, detail: str = "", *, explicit: bool = False, called: str | None = None):
        via = f" (needed by {called})" if called and called != action else ""
        if explicit:
            hint = (f"an explicit deny refuses {action} (an organisation's service control policy, a permissions "
                    "boundary or a Deny statement): granting it yourself does not help; ask your AWS administrator, "
                    "or use a profile it does not apply to (--profile)")
        else:
            hint = (f"grant the permission {action} to your IAM user or role (`tflab iam-policy` prints all that "
                    "tflab needs), or use a profile that has it (--profile)")
        super().__init__(f"not authorized to perform {action}{via}" + (f": {detail}" if detail else ""), hint=hint)
        self.action = action
        self.explicit = explicit


class QuotaError(InfraError):
    """A vCPU quota is too low for the instance."""

    def __init__(self, quota_name: str, quota_code: str, region: str, current: float | None, needed: int):
        have = f"{current:g} vCPUs" if current is not None else "too low"
        super().__init__(
            f"the quota '{quota_name}' ({quota_code}) in {region} is {have}; this instance needs {needed}",
            hint=f"request at least {needed}: aws service-quotas request-service-quota-increase --region {region} "
                 f"--service-code ec2 --quota-code {quota_code} --desired-value {needed}")
        self.quota_code = quota_code
        self.current = current
        self.needed = needed


class CapacityError(InfraError):
    """No zone of the region had capacity for the instance type."""

    def __init__(self, instance_type: str, region: str, zones: list[str]):
        super().__init__(f"no capacity for {instance_type} in {region} (zones tried: {', '.join(zones) or 'none'})",
                         hint="try again in a few minutes, another region (--region), another type (--instance-type), "
                              "or --spot")
        self.instance_type = instance_type
        self.zones = zones


class AmiError(InfraError):
    """The image cannot be resolved or does not fit the instance type."""


class InputError(InfraError):
    """A launch option is invalid (instance type, subnet, CIDR...)."""


class CloudError(InfraError):
    """Any other refusal from the cloud, with its code."""

    def __init__(self, message: str, code: str = "", hint: str | None = None):
        super().__init__(message, hint)
        self.code = code


class WaitTimeout(InfraError):
    """Something did not reach the awaited state in time."""


class LabBusy(InputError):
    """Another `up` holds the lab's claim (its key pair, whose name is unique in the region), or an earlier
    `up` left it behind without an instance."""

    def __init__(self, lab: str, region: str, key_name: str, created: str, stale: bool):
        if stale:
            super().__init__(f"lab '{lab}' in {region} has no instance but a key pair {key_name} left by an "
                             f"earlier `tflab up` (made {created}) that could not be removed",
                             hint=f"`tflab down --name {lab}` removes what that `up` left, then `tflab up` again")
        else:
            super().__init__(f"another `tflab up` of lab '{lab}' in {region} is under way (it claimed the lab's key "
                             f"pair {key_name} at {created}); this one launched nothing",
                             hint=f"wait for it: then `tflab up --name {lab}` reuses its lab (or `tflab down "
                                  f"--name {lab}` removes it)")
        self.lab = lab
        self.key_name = key_name
        self.stale = stale
