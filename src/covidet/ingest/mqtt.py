"""Vital signs over MQTT: the payload schema, the durable QoS-1 subscriber and Mosquitto's files.

Bedside sensors publish one JSON object per set of measurements to ``covidet/devices/<device id>/vitals``
(``<device id>`` is :attr:`covidet.store.models.Device.id`), with QoS 1. :class:`VitalsSubscriber`
receives them through the broker (Mosquitto), validates them against :class:`VitalsPayload`, stores
them in batches and only then acknowledges them (PUBACK), so a message the broker handed over is either
committed to the database or redelivered after a crash or reconnect. Redeliveries are stored once: the
database keeps one row per (device, patient, measured_at).

Invalid input is never dropped silently: it goes to ``rejected_messages`` with its reason, is logged
and is acknowledged (redelivering it would not make it valid).

:func:`write_mosquitto_files` writes the broker's password file and ACL from the device table, so each
sensor may publish to its own topic only and the covidet subscriber may only read, plus an example
configuration that binds client ids to user names and bounds message sizes. See ``docs/mqtt.md`` and
``docs/security-mqtt.md``.

This module is the public face; the parts live in sibling modules:

- :mod:`covidet.ingest.mqtt_payload`: topic, payload schema, :func:`parse_vitals`;
- :mod:`covidet.ingest.mqtt_broker_config`: the Mosquitto configuration covidet generates;
- :mod:`covidet.ingest.mqtt_broker_files`: the password file, ACL and example configuration on disk;
- :mod:`covidet.ingest.mqtt_store`: validate and store a batch of received messages;
- :mod:`covidet.ingest.mqtt_subscriber`: the connection and the acknowledgements;
- :mod:`covidet.ingest.mqtt_writer`: the writer thread (batches, retries, counters).
"""

from __future__ import annotations

from covidet.ingest.mqtt_broker_config import (
    PACKET_HEADROOM_BYTES,
    TlsListener,
    max_packet_bytes,
    mosquitto_access_lines,
    mosquitto_config,
    mosquitto_listener_lines,
)
from covidet.ingest.mqtt_broker_files import MosquittoFiles, write_mosquitto_files
from covidet.ingest.mqtt_payload import (
    EARLIEST_TIMESTAMP,
    MAX_CLOCK_SKEW,
    MAX_PAYLOAD_BYTES,
    TOPIC_FILTER,
    VITAL_LIMITS,
    VitalsPayload,
    VitalsRejected,
    device_id_from_topic,
    parse_vitals,
)
from covidet.ingest.mqtt_subscriber import IngestStats, VitalsSubscriber

__all__ = [
    "EARLIEST_TIMESTAMP",
    "MAX_CLOCK_SKEW",
    "MAX_PAYLOAD_BYTES",
    "PACKET_HEADROOM_BYTES",
    "TOPIC_FILTER",
    "VITAL_LIMITS",
    "IngestStats",
    "MosquittoFiles",
    "TlsListener",
    "VitalsPayload",
    "VitalsRejected",
    "VitalsSubscriber",
    "device_id_from_topic",
    "max_packet_bytes",
    "mosquitto_access_lines",
    "mosquitto_config",
    "mosquitto_listener_lines",
    "parse_vitals",
    "write_mosquitto_files",
]
