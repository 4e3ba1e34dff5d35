"""The durable QoS-1 subscriber: receive vitals from the broker, store them, and only then acknowledge.

:class:`VitalsSubscriber` owns the MQTT connection (paho's network thread) and one writer thread that
hands batches to :class:`~covidet.ingest.mqtt_store.VitalsStore` and acknowledges what was committed.
A payload over the size limit is refused on arrival (only its start is kept, for ``rejected_messages``);
one far over it never arrives (the MQTT v5 Maximum Packet Size the subscriber announces). Connection
failures are logged with their cause: a TLS certificate the CA does not verify is named as such. See
``docs/mqtt.md``.

The writer thread (batching, storing, retrying) is :class:`~covidet.ingest.mqtt_writer.BatchWriter`;
this module owns the connection: paho's callbacks, the subscription and the acknowledgements.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from covidet.config import Settings
from covidet.ingest.mqtt_broker_config import max_packet_bytes
from covidet.ingest.mqtt_payload import MAX_PAYLOAD_BYTES, TOPIC_FILTER, oversize_reason
from covidet.ingest.mqtt_store import ReceivedMessage, VitalsStore
from covidet.ingest.mqtt_writer import BatchWriter, IngestStats
from covidet.store.db import Database
from covidet.store.models import utcnow

__all__ = [
    "OVERSIZE_KEPT_BYTES",
    "IngestStats",
    "SubscriberOptions",
    "VitalsSubscriber",
    "describe_connect_error",
]

logger = logging.getLogger(__name__)

#: How much of a payload over the size limit is kept in ``rejected_messages`` (enough to tell what sent it).
OVERSIZE_KEPT_BYTES = 1024


class SubscriberOptions(TypedDict, total=False):
    """The keyword arguments of :class:`VitalsSubscriber` that :meth:`VitalsSubscriber.from_settings`
    takes as overrides (``None``: keep the setting)."""

    host: str | None
    port: int | None
    client_id: str | None
    username: str | None
    password: str | None
    tls_ca: Path | str | None
    batch_size: int | None
    batch_delay_s: float | None
    receive_maximum: int | None
    keepalive_s: int | None
    reconnect_delay_s: tuple[int, int] | None
    max_payload_bytes: int | None


class VitalsSubscriber:
    """Durable MQTT subscriber that stores vital signs (see the module docstring for the guarantees).

    It connects with MQTT v5, a fixed ``client_id``, ``clean_start=False`` and a session that never
    expires, so the broker queues the messages published while it is away and hands them over on
    reconnect. paho's network thread only queues received messages; one writer thread takes up to
    ``batch_size`` of them (waiting at most ``batch_delay_s`` for more), validates them, stores them in
    one transaction and then acknowledges them in the order received. ``receive_maximum`` (default
    ``2 * batch_size``) is how many unacknowledged messages the broker may hand over at once.

    With the broker configuration covidet generates (``use_username_as_clientid``), the broker keys the
    session by the user name and ignores ``client_id``: no other login can take the session over (two
    subscribers with the same user still would: Mosquitto closes the older connection each time).

    ``max_payload_bytes`` (``COVIDET_MQTT_MAX_PAYLOAD_BYTES``): a larger payload is refused on arrival
    and recorded in ``rejected_messages`` with its first :data:`OVERSIZE_KEPT_BYTES` bytes; the
    subscriber announces an MQTT v5 Maximum Packet Size of that limit plus
    :data:`~covidet.ingest.mqtt_broker_config.PACKET_HEADROOM_BYTES`, so the broker never sends it a
    packet far beyond it (it discards it instead).

    Use :meth:`start` and :meth:`stop` once each (or ``with``); :meth:`wait_ready` blocks until
    subscribed. Devices must publish with QoS 1 for the guarantee: QoS-0 messages are stored when they
    arrive but the broker neither queues nor redelivers them.
    """

    def __init__(
        self,
        db: Database,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "covidet-ingest",
        username: str | None = None,
        password: str | None = None,
        tls_ca: Path | str | None = None,
        batch_size: int = 500,
        batch_delay_s: float = 0.02,
        receive_maximum: int | None = None,
        keepalive_s: int = 30,
        reconnect_delay_s: tuple[int, int] = (1, 30),
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        if batch_size < 1 or batch_delay_s < 0 or max_payload_bytes < 1:
            raise ValueError("batch_size and max_payload_bytes must be >= 1, batch_delay_s >= 0")
        self.db = db
        self.username = username
        self.max_payload_bytes = max_payload_bytes
        self.tls = tls_ca is not None
        self.host, self.port, self.client_id = host, port, client_id
        self.batch_size = batch_size
        self.batch_delay_s = batch_delay_s
        self._keepalive_s = keepalive_s
        self._receive_maximum = min(receive_maximum or 2 * batch_size, 65535)

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.reconnect_delay_set(*reconnect_delay_s)
        if username is not None:
            client.username_pw_set(username, password)
        if tls_ca is not None:
            # Verifies the broker's certificate and host name against this CA.
            client.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._connection_lock = threading.Lock()
        self._generation = 0
        self._writer = BatchWriter(
            VitalsStore(db, max_payload_bytes=max_payload_bytes),
            self._ack,
            stopping=self._stopping,
            batch_size=batch_size,
            batch_delay_s=batch_delay_s,
        )

    @property
    def on_stored(self) -> Callable[[set[int]], None] | None:
        """Called on the writer thread with the database ids of the patients whose vital signs a
        batch stored (after commit and ack); ``covidet serve`` re-triages their images with it."""
        return self._writer.on_stored

    @on_stored.setter
    def on_stored(self, callback: Callable[[set[int]], None] | None) -> None:
        self._writer.on_stored = callback

    @classmethod
    def from_settings(
        cls, db: Database, settings: Settings, **overrides: Unpack[SubscriberOptions]
    ) -> VitalsSubscriber:
        """A subscriber configured from :class:`covidet.config.Settings` (``mqtt_*``) and ``overrides``
        (an override of ``None`` keeps the setting)."""
        options: SubscriberOptions = {
            "host": settings.mqtt_broker_host,
            "port": settings.mqtt_broker_port,
            "client_id": settings.mqtt_client_id,
            "username": settings.mqtt_username,
            "password": settings.mqtt_password,
            "tls_ca": settings.mqtt_tls_ca,
            "max_payload_bytes": settings.mqtt_max_payload_bytes,
        }
        options.update({key: value for key, value in overrides.items() if value is not None})
        return cls(db, **options)

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread and connect in the background (retrying until the broker answers)."""
        if self._writer.started:
            raise RuntimeError("subscriber already started")
        self._writer.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0xFFFFFFFF  # the session never expires (MQTT v5 3.1.2.11.2)
        properties.ReceiveMaximum = self._receive_maximum
        # The broker must not send a packet beyond this (MQTT v5 3.1.2.11.4): it discards it instead, so
        # even a broker without a size limit cannot make this process read a 100 MB payload.
        properties.MaximumPacketSize = max_packet_bytes(self.max_payload_bytes)
        # clean_start=False on every connect, the first included: paho's default would wipe the session,
        # and with it the messages the broker queued while covidet was down.
        self._client.connect_async(
            self.host, self.port, keepalive=self._keepalive_s, clean_start=False, properties=properties
        )
        self._client.loop_start()
        logger.info(
            "MQTT subscriber connecting to %s:%d%s as user %r (client id %r)",
            self.host,
            self.port,
            " over TLS" if self.tls else "",
            self.username,
            self.client_id,
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until connected and subscribed (or ``timeout`` seconds); true when ready."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Store and acknowledge what was received, then disconnect (the broker keeps the session).

        Messages that arrive meanwhile are left unacknowledged: the broker hands them over again on the
        next connect.
        """
        self._stopping.set()
        if not self._writer.join(timeout):
            logger.warning("MQTT writer still busy after %.0f s; its messages stay unacknowledged", timeout)
        # paho's loop logs a spurious "not connected" error after a requested disconnect.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        logger.info("MQTT subscriber stopped: %s", self.stats())

    def __enter__(self) -> VitalsSubscriber:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> IngestStats:
        """A snapshot of the counters."""
        return self._writer.stats(connected=self._ready.is_set())

    # --- paho callbacks (network thread: keep them short) -----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        with self._connection_lock:
            self._generation += 1
        logger.info(
            "MQTT connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present
        )
        # Subscribing again on every connect covers a session the broker lost; retained messages are
        # only sent for a new subscription (they would be duplicates otherwise).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe(TOPIC_FILTER, options=options)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the exception is the cause.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLCertVerificationError):
            logger.error("%s; retrying", describe_connect_error(self.host, self.port, error))
        else:
            logger.warning("%s; retrying", describe_connect_error(self.host, self.port, error))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("MQTT broker refused the subscription to %s: %s", TOPIC_FILTER, reason_codes)
            return
        self._ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()
        with self._connection_lock:
            self._generation += 1
        if self._stopping.is_set():
            return
        logger.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not queued, so never acknowledged: the broker redelivers it on the next connect
        payload, size, rejection = message.payload, len(message.payload), None
        if size > self.max_payload_bytes:
            # Refused here, before it is queued or parsed: only its start is kept, for the record.
            rejection = oversize_reason(size, self.max_payload_bytes)
            payload = payload[:OVERSIZE_KEPT_BYTES]
            logger.warning("refusing MQTT message on %s on arrival: %s", message.topic, rejection)
        self._writer.put(
            ReceivedMessage(
                message.topic, bytes(payload), message.mid, message.qos, self._generation, utcnow(), rejection
            )
        )

    def _ack(self, batch: Sequence[ReceivedMessage]) -> None:
        # A packet id is only meaningful on the connection it came on: after a reconnect the broker
        # redelivers unacknowledged messages (with the same ids) and may reuse acknowledged ids for new
        # messages, so acknowledging an old id on the new connection could acknowledge a message that is
        # not stored yet. Old-connection messages are therefore left to their redelivery (deduplicated).
        with self._connection_lock:
            for item in batch:
                if item.qos > 0 and item.generation == self._generation:
                    self._client.ack(item.mid, item.qos)


def describe_connect_error(host: str, port: int, error: BaseException | None) -> str:
    """One line for a failed connection attempt that names its cause.

    A TLS certificate the configured CA does not verify (or that names another host) is called what it
    is, with the CA setting to check, rather than "cannot reach the broker".
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed for the MQTT broker {host}:{port}: certificate verify "
            f"failed: {error.verify_message or error} "
            "(check that COVIDET_MQTT_TLS_CA is the CA that signed the broker's certificate and that the "
            "certificate names this host)"
        )
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with the MQTT broker {host}:{port} failed: {error}"
    if error is None:
        return f"cannot reach the MQTT broker {host}:{port}"
    return f"cannot reach the MQTT broker {host}:{port}: {error}"
