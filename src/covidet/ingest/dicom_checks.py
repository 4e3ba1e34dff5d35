"""Association-level admission rules of the DICOM receiver, beyond "a registered modality's AE title":

- **Association limit** (:attr:`AssociationPolicy.max_associations`): only associations that have
  been *accepted* count. A TCP connection that has not sent an A-ASSOCIATE-RQ (a port scan, a load
  balancer's health check, a stalled sender) holds no place; it is dropped after the ACSE timeout.
  Over the limit, the request gets A-ASSOCIATE-RJ *rejected-transient, service provider
  (presentation), local limit exceeded*, so the modality retries later.
- **Peer address** (:attr:`AssociationPolicy.peer_networks`): an AE title may be tied to addresses
  or networks; a request with that calling AE title from any other address is rejected permanently
  (*calling AE title not recognised*), so a stolen AE title is useless off the modality's network.

Each refusal is logged (WARNING, one line: peer address, AE title, reason) and kept in
``rejected_messages`` by the receiver (see :mod:`covidet.ingest.dicom_scp`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotations: the checks themselves need no pynetdicom
    from pynetdicom.association import Association

__all__ = ["DEFAULT_MAX_ASSOCIATIONS", "AssociationPolicy", "parse_peer_networks"]

#: Accepted associations served at once unless configured (``COVIDET_DICOM_MAX_ASSOCIATIONS``).
DEFAULT_MAX_ASSOCIATIONS = 32

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_peer_networks(mapping: Mapping[str, Iterable[str]] | None) -> dict[str, tuple[Network, ...]]:
    """``{"AE": ["10.0.0.5", "10.1.0.0/24"]}`` -> AE title -> networks (a bare address is a /32 or
    /128). Raises ``ValueError`` naming the bad entry."""
    result: dict[str, tuple[Network, ...]] = {}
    for ae_title, addresses in (mapping or {}).items():
        title = ae_title.strip()
        if not title or len(title) > 16:
            raise ValueError(f"dicom_peer_addresses: AE title {ae_title!r} must be 1-16 characters")
        if isinstance(addresses, str):
            addresses = [addresses]
        networks = []
        for text in addresses:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"dicom_peer_addresses[{title}]: {exc}") from None
        if not networks:
            raise ValueError(f"dicom_peer_addresses[{title}]: give at least one address or network")
        result[title] = tuple(networks)
    return result


@dataclass(frozen=True)
class AssociationPolicy:
    """The receiver's admission limits; see the module docstring."""

    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    #: AE title -> the networks it may call from; AE titles not listed may call from anywhere.
    peer_networks: Mapping[str, tuple[Network, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")

    def address_refusal(self, ae_title: str, host: str) -> str | None:
        """Why ``ae_title`` may not call from ``host``, or ``None`` when it may."""
        networks = self.peer_networks.get(ae_title)
        if not networks:
            return None
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return f"peer address {host!r} is not an IP address"
        if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:10.0.0.5
            address = address.ipv4_mapped
        if any(address in network for network in networks):
            return None
        allowed = ", ".join(str(n) for n in networks)
        return f"calling AE title {ae_title!r} may only call from {allowed}, not {host}"

    def limit_refusal(self, assoc: Association, accepted: Iterable[Association]) -> str | None:
        """Why ``assoc`` may not be accepted now (the limit is reached), or ``None``.

        ``accepted`` are the associations accepted earlier; only those still running count.
        """
        live = sum(1 for other in accepted if other is not assoc and other.is_alive())
        if live < self.max_associations:
            return None
        return f"{live} associations already running, the limit is {self.max_associations}"
