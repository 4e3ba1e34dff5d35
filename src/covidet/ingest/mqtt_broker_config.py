"""The Mosquitto configuration covidet generates: one source for every broker covidet starts or describes.

``mosquitto.conf.example`` (written by ``covidet devices add`` / ``covidet mqtt-broker-files``), the
private broker of ``covidet demo`` and the brokers the tests start all take their access-control and
size lines from here, so a hardening written here holds everywhere:

- ``allow_anonymous false`` with ``password_file`` and ``acl_file``: every client logs in; each sensor
  may publish to its own topic only, the covidet subscriber may only read (``acl``).
- ``use_username_as_clientid true`` on **every listener** (it is a per-listener option in Mosquitto
  2.0; placed before the first ``listener`` line it silently does nothing for the listeners below).
  The broker replaces the client id a client sends by its user name, so a sensor that connects with
  the subscriber's client id gets its own user name as client id instead: it can neither disconnect
  the subscriber nor take over (and wipe) its persistent session and the QoS-1 readings queued in it.
- ``message_size_limit`` (the payload limit, ``COVIDET_MQTT_MAX_PAYLOAD_BYTES``): the broker drops a
  larger message and completes its QoS-1 flow (MQTT v5 publishers get a PUBACK with a failure reason
  code, so a sensor does not resend it forever); subscribers never see it.
- ``max_packet_size`` (the payload limit plus :data:`PACKET_HEADROOM_BYTES`): a client that sends a
  packet beyond it is disconnected as soon as the packet's length is read, before the broker buffers
  it; a 100 MB payload costs the broker nothing.

See ``docs/mqtt.md`` and ``docs/security-mqtt.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covidet.ingest.mqtt_payload import MAX_PAYLOAD_BYTES

__all__ = [
    "MQTT_MAX_PACKET_BYTES",
    "PACKET_HEADROOM_BYTES",
    "TlsListener",
    "max_packet_bytes",
    "mosquitto_access_lines",
    "mosquitto_config",
    "mosquitto_listener_lines",
]

#: Room above the payload limit for the rest of an MQTT packet (fixed header, topic, properties). It is
#: generous on purpose: a payload a little over the limit should meet ``message_size_limit`` (dropped,
#: PUBACK, recorded where possible), not ``max_packet_size`` (disconnect, and a QoS-1 sender resends it).
PACKET_HEADROOM_BYTES = 64 * 1024
#: The largest packet MQTT can describe (its remaining length is at most 268,435,455 bytes).
MQTT_MAX_PACKET_BYTES = 268_435_455


def max_packet_bytes(max_payload_bytes: int) -> int:
    """The packet size limit that goes with a payload limit (broker ``max_packet_size``, and the MQTT v5
    Maximum Packet Size the covidet subscriber announces)."""
    return max_payload_bytes + PACKET_HEADROOM_BYTES


def mosquitto_access_lines(
    password_file: Path | str, acl_file: Path | str, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> list[str]:
    """The global lines: log-in required, the password file and ACL, the payload and packet limits."""
    largest = MQTT_MAX_PACKET_BYTES - PACKET_HEADROOM_BYTES
    if not 1 <= max_payload_bytes <= largest:
        raise ValueError(f"max_payload_bytes must be 1 to {largest} (MQTT's packet limit less the headroom)")
    return [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        f"message_size_limit {max_payload_bytes}",
        f"max_packet_size {max_packet_bytes(max_payload_bytes)}",
    ]


@dataclass(frozen=True, slots=True)
class TlsListener:
    """An MQTT-over-TLS listener: port, optional bind address, and the broker's PEM files."""

    port: int = 8883
    host: str | None = None
    cafile: Path = field(default=Path("/etc/mosquitto/certs/ca.crt"))
    certfile: Path = field(default=Path("/etc/mosquitto/certs/server.crt"))
    keyfile: Path = field(default=Path("/etc/mosquitto/certs/server.key"))


def mosquitto_listener_lines(
    port: int, host: str | None = None, *, tls: TlsListener | None = None
) -> list[str]:
    """One ``listener`` block, with ``use_username_as_clientid true`` (per listener: see the module).

    With ``tls``, its certificate lines follow (``port`` and ``host`` are then taken from ``tls``).
    """
    if tls is not None:
        port, host = tls.port, tls.host
    lines = [f"listener {port}" + (f" {host}" if host else "")]
    # The client id becomes the user name: no client can take over another's id, session or queue.
    lines.append("use_username_as_clientid true")
    if tls is not None:
        lines += [
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "tls_version tlsv1.2",
        ]
    return lines


_HEADER = """\
# Mosquitto configuration for covidet, written by `covidet devices add` (example: review, then use it
# with `mosquitto -c THIS_FILE`, or copy the lines you need into /etc/mosquitto/conf.d/covidet.conf;
# Debian's /etc/mosquitto/mosquitto.conf already sets persistence, persistence_location and log_dest).
# After each `covidet devices add`, reload the broker so it rereads the password file and the ACL:
#   systemctl reload mosquitto        (or: kill -HUP <pid of mosquitto>)
# See docs/mqtt.md and docs/security-mqtt.md.
"""


def mosquitto_config(
    password_file: Path | str,
    acl_file: Path | str,
    *,
    plain_port: int | None = 1883,
    plain_host: str = "127.0.0.1",
    tls: TlsListener | None = TlsListener(),
    persistence_location: Path | str = "/var/lib/mosquitto/",
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    max_queued_messages: int = 1_000_000,
    autosave_interval_s: int = 60,
) -> str:
    """A complete ``mosquitto.conf`` for covidet. The defaults give ``mosquitto.conf.example``: plain
    MQTT on loopback port 1883 for the subscriber on the broker's host, MQTT over TLS on 8883 for the
    sensors; the tests render the same text with their own ports, folders and certificates.

    ``max_queued_messages`` 0 means no limit (Mosquitto's own default, 1000, drops QoS-1 messages
    beyond it silently while the subscriber is away).
    """
    if plain_port is None and tls is None:
        raise ValueError("a broker needs at least one listener")
    location = str(persistence_location)
    lines = [
        *mosquitto_access_lines(password_file, acl_file, max_payload_bytes=max_payload_bytes),
        "",
        "# Keep the covidet subscriber's QoS-1 session (and its queued messages) on disk across restarts.",
        "persistence true",
        f"persistence_location {location if location.endswith('/') else location + '/'}",
        "# Seconds between saves of the in-memory state: a broker crash loses what arrived since then.",
        f"autosave_interval {autosave_interval_s}",
        "# Mosquitto's default keeps 1000 queued QoS-1 messages per client and then drops new ones silently;",
        "# give the subscriber room for a long outage (about 300 bytes a reading).",
        f"max_queued_messages {max_queued_messages}",
    ]
    if plain_port is not None:
        lines += ["", "# Plain MQTT on loopback only: the covidet subscriber on this host."]
        lines += mosquitto_listener_lines(plain_port, plain_host)
    if tls is not None:
        lines += [
            "",
            "# MQTT over TLS for the sensors on the ward network (set COVIDET_MQTT_TLS_CA on the subscriber",
            "# side to use this listener from another host).",
        ]
        lines += mosquitto_listener_lines(tls.port, tls=tls)
    return _HEADER + "\n" + "\n".join(lines) + "\n"
