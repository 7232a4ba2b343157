"""The provisioning contract: dataclasses in and out, every resource found by the lab's tags.

A Provider makes and removes one lab's resources: a key pair, a security group that lets SSH
in from one address, and one instance. Implementations must:

- tag everything they create with the lab (so `leftovers` and `teardown` work from tags alone,
  without any local state),
- bound every wait (raise infra.errors.WaitTimeout),
- raise only infra.errors types for failures the user can act on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
DEFAULT_INSTANCE_TYPE = "g4dn.xlarge"

Progress = Callable[[str], None]  # called with a short "what we wait for now" text


@dataclass(frozen=True)
class LaunchSpec:
    """What `up` asks for."""

    lab: str
    ssh_cidr: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    disk_gb: int = 100
    spot: bool = False
    ami: str | None = None
    ami_parameter: str = DEFAULT_AMI_PARAMETER
    subnet_id: str | None = None
    user_data: str | bytes = ""  # bytes go as they are (tflab sends a gzip-compressed script)
    shutdown_behavior: str = "stop"  # what the instance's own shutdown does (the idle watchdog's): stop | terminate
    nodes: int = 1  # instances of the lab, launched together in one zone (index 0 is the chief)
    placement: str = "cluster"  # with nodes > 1: "cluster" (a cluster placement group, where the type allows) | "none"
    # Ask for a public IPv4 address at launch (whatever the subnet's own setting); False only where the lab
    # is reached at its private address (--ssh-host over a VPN, in a subnet without an internet gateway).
    public_address: bool = True


@dataclass(frozen=True)
class Image:
    """A resolved machine image."""

    id: str
    name: str
    architecture: str
    root_device: str
    source: str  # how it was found: the SSM parameter, or "--ami"


@dataclass(frozen=True)
class InstanceType:
    """What the launch needs to know about an instance type."""

    name: str
    vcpus: int
    architectures: tuple[str, ...]
    gpus: str  # e.g. "1 x NVIDIA T4 (16 GiB)", or "" for none
    placement_strategies: tuple[str, ...] = ()  # what placement groups it can join: cluster, partition, spread


@dataclass(frozen=True)
class QuotaCheck:
    """The vCPU quota that applies to a launch, and what was found."""

    code: str
    name: str
    needed: int
    value: float | None  # None: could not be read
    note: str = ""


@dataclass(frozen=True)
class Instance:
    """One instance as the cloud describes it."""

    id: str
    state: str
    instance_type: str
    public_ip: str | None
    private_ip: str | None
    zone: str | None
    launch_time: str | None  # ISO 8601
    spot: bool
    image_id: str | None
    key_name: str | None
    security_groups: tuple[str, ...] = ()
    lab: str | None = None
    state_reason: str | None = None  # why it is in its state (e.g. "Client.InstanceInitiatedShutdown: ...")
    node: int | None = None  # its index in a lab of several instances (the tflab:node tag)

    @property
    def coming_up(self) -> bool:
        """Pending or running; else it is stopping, stopped, shutting down or terminated, and comes up only if
        started again ("Amazon EC2 instance state changes", EC2 User Guide)."""
        return self.state in ("pending", "running")


@dataclass(frozen=True)
class Leftovers:
    """What is still there, tagged with a lab."""

    instances: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    key_pairs: tuple[str, ...] = ()
    placement_groups: tuple[str, ...] = ()
    # What could not be looked at (a look-up the credentials may not make), in words: `down` says so.
    unchecked: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.instances or self.volumes or self.security_groups or self.key_pairs or self.placement_groups)

    def describe(self) -> str:
        parts = [f"{kind.replace('_', ' ')}: {', '.join(ids)}" for kind, ids in
                 (("instances", self.instances), ("volumes", self.volumes),
                  ("security_groups", self.security_groups), ("key_pairs", self.key_pairs),
                  ("placement_groups", self.placement_groups)) if ids]
        return "; ".join(parts) or "nothing"


@dataclass
class Created:
    """What one `up` created so far, so a failure can remove exactly that."""

    key_pair: str | None = None
    security_group: str | None = None
    placement_group: str | None = None
    instances: list[str] = field(default_factory=list)


class Provider(ABC):
    """Makes, finds and removes one lab's resources (see the module docstring for the contract)."""

    region: str

    @abstractmethod
    def whoami(self) -> str:
        """The caller's identity (an ARN); raises CredentialsError when there are no usable credentials."""

    @abstractmethod
    def resolve_image(self, spec: LaunchSpec) -> Image:
        """The image to launch: --ami, else the SSM parameter's current value."""

    @abstractmethod
    def describe_type(self, instance_type: str) -> InstanceType:
        """The instance type's vCPUs, architectures and GPUs."""

    @abstractmethod
    def check_quota(self, itype: InstanceType, spot: bool, count: int = 1) -> QuotaCheck:
        """Read the applicable vCPU quota; raise QuotaError when it is below what the launch of count
        instances needs (with what already runs)."""

    @abstractmethod
    def find_instances(self, lab: str | None, live_only: bool = True) -> list[Instance]:
        """The lab's instances (every tflab lab's when lab is None), by tags."""

    @abstractmethod
    def create_key_pair(self, lab: str, created: Created, own_fingerprint: str | None = None) -> str:
        """Create the lab's key pair (ed25519); returns the private key (OpenSSH format). A key pair of the
        lab already there whose fingerprint is own_fingerprint (the lab's key on this machine) is replaced."""

    @abstractmethod
    def ensure_security_group(self, lab: str, ssh_cidr: str, subnet_id: str | None, created: Created,
                              members: bool = False) -> str:
        """The lab's security group with TCP 22 from ssh_cidr only (and, with members, every port from the
        group's own members: the nodes of a lab of several); returns its id."""

    @abstractmethod
    def ensure_placement_group(self, lab: str, created: Created) -> str:
        """The lab's cluster placement group (its nodes close together on the network); returns its name."""

    @abstractmethod
    def launch(self, spec: LaunchSpec, image: Image, security_group: str, key_name: str, created: Created,
               progress: Progress, placement_group: str | None = None) -> list[Instance]:
        """Launch the lab's spec.nodes instances together in one zone (all or none), trying the region's
        other zones when one has no capacity for them all; tag each with its node index."""

    @abstractmethod
    def start(self, instance_id: str) -> None:
        """Start a stopped instance."""

    @abstractmethod
    def wait_running(self, instance_id: str, timeout: float, progress: Progress, public: bool = True) -> Instance:
        """Wait until the instance runs and has a public address (public=False: a private one)."""

    @abstractmethod
    def subnet_reaches_internet(self, subnet_id: str) -> bool | None:
        """Whether a public address in the subnet is reachable (it routes to an internet gateway); None when
        that cannot be read."""

    @abstractmethod
    def host_key_fingerprints(self, instance_id: str, timeout: float, progress: Progress) -> dict[str, str]:
        """The SSH host key fingerprints from the console output; {} when they do not appear in time
        (PermissionDenied where the console output may not be read)."""

    @abstractmethod
    def teardown(self, lab: str, progress: Progress, timeout: float = 900.0) -> list[str]:
        """Remove every resource tagged with the lab; returns what was removed (descriptions). It needs no
        permission that `up` did not need: a look-up for what bills nothing (key pairs, placement groups) or
        goes with the instances (their volumes) is skipped where it is denied, after the instances are gone."""

    @abstractmethod
    def remove_created(self, created: Created, progress: Progress, timeout: float = 900.0) -> list[str]:
        """Remove exactly what one `up` created (a failed `up` cleans up with this, never by tag: another
        `up` of the lab may hold the rest); returns what was removed (descriptions)."""

    @abstractmethod
    def leftovers(self, lab: str) -> Leftovers:
        """What is still tagged with the lab (terminated instances excepted); look-ups that are denied for
        what bills nothing or goes with the instances are listed in `unchecked` instead of failing."""

    @abstractmethod
    def volume_gb(self, lab: str) -> int:
        """The size of the lab's volumes, GiB (they bill while the instance is stopped too)."""

    @abstractmethod
    def spot_price(self, instance_type: str, zone: str) -> float | None:
        """The spot price charged now for the type in the zone (USD per hour), or None."""
