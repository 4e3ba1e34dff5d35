"""The durable QoS-1 subscriber: receive vitals from the broker, store them, and only then acknowledge.

:class:`VitalsSubscriber` owns the MQTT connection (paho's network thread) and one writer thread that
hands batches to :class:`~covidet.ingest.mqtt_store.VitalsStore` and acknowledges what was committed.
A payload over the size limit is refused on arrival (only its start is kept, for ``rejected_messages``);
one far over it never arrives (the MQTT v5 Maximum Packet Size the subscriber announces). Connection
failures are logged with their cause: a TLS certificate the CA does not verify is named as such. See
``docs/mqtt.md``.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from covidet.config import Settings
from covidet.ingest.mqtt_broker_config import max_packet_bytes
from covidet.ingest.mqtt_payload import MAX_PAYLOAD_BYTES, TOPIC_FILTER, oversize_reason
from covidet.ingest.mqtt_store import ReceivedMessage, StoreResult, VitalsStore, is_transient
from covidet.store.db import Database
from covidet.store.models import utcnow

__all__ = ["OVERSIZE_KEPT_BYTES", "IngestStats", "VitalsSubscriber", "describe_connect_error"]

logger = logging.getLogger(__name__)

#: How much of a payload over the size limit is kept in ``rejected_messages`` (enough to tell what sent it).
OVERSIZE_KEPT_BYTES = 1024


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of a :class:`VitalsSubscriber` since it started.

    ``received`` messages handed over by the broker; ``stored`` new vital-sign rows; ``duplicates``
    valid readings already stored (redeliveries); ``rejected`` rows written to ``rejected_messages``;
    ``batches`` committed transactions; ``last_commit_at`` wall-clock time (Unix seconds) of the last one.
    """

    received: int
    stored: int
    duplicates: int
    rejected: int
    batches: int
    pending: int
    connected: bool
    last_commit_at: float | None


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

        self._queue: queue.Queue[ReceivedMessage] = queue.Queue()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._connection_lock = threading.Lock()
        self._generation = 0
        self._writer: threading.Thread | None = None
        self._store = VitalsStore(db, max_payload_bytes=max_payload_bytes)
        self._counts = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0, "batches": 0}
        self._last_commit_at: float | None = None
        #: Called on the writer thread with the database ids of the patients whose vital signs a
        #: batch stored (after commit and ack); ``covidet serve`` re-triages their images with it.
        self.on_stored: Callable[[set[int]], None] | None = None

    @classmethod
    def from_settings(cls, db: Database, settings: Settings, **overrides: Any) -> VitalsSubscriber:
        """A subscriber configured from :class:`covidet.config.Settings` (``mqtt_*``) and ``overrides``."""
        options: dict[str, Any] = {
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
        if self._writer is not None:
            raise RuntimeError("subscriber already started")
        self._writer = threading.Thread(target=self._write_loop, name="covidet-mqtt-writer", daemon=True)
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
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                logger.warning(
                    "MQTT writer still busy after %.0f s; its messages stay unacknowledged", timeout
                )
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
        return IngestStats(
            **self._counts,
            pending=self._queue.qsize(),
            connected=self._ready.is_set(),
            last_commit_at=self._last_commit_at,
        )

    # --- paho callbacks (network thread: keep them short) -----------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
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

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the exception is the cause.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLCertVerificationError):
            logger.error("%s; retrying", describe_connect_error(self.host, self.port, error))
        else:
            logger.warning("%s; retrying", describe_connect_error(self.host, self.port, error))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("MQTT broker refused the subscription to %s: %s", TOPIC_FILTER, reason_codes)
            return
        self._ready.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        self._ready.clear()
        with self._connection_lock:
            self._generation += 1
        if self._stopping.is_set():
            return
        logger.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not queued, so never acknowledged: the broker redelivers it on the next connect
        self._counts["received"] += 1
        payload, size, rejection = message.payload, len(message.payload), None
        if size > self.max_payload_bytes:
            # Refused here, before it is queued or parsed: only its start is kept, for the record.
            rejection = oversize_reason(size, self.max_payload_bytes)
            payload = payload[:OVERSIZE_KEPT_BYTES]
            logger.warning("refusing MQTT message on %s on arrival: %s", message.topic, rejection)
        self._queue.put(
            ReceivedMessage(
                message.topic, bytes(payload), message.mid, message.qos, self._generation, utcnow(), rejection
            )
        )

    # --- writer thread ------------------------------------------------------------------------------

    def _next_batch(self) -> list[ReceivedMessage] | None:
        """Up to ``batch_size`` messages; [] when idle; None when stopping and everything is stored."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return None if self._stopping.is_set() else []
        batch = [first]
        deadline = time.monotonic() + self.batch_delay_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            delay = 1.0
            while batch:
                try:
                    self._commit_and_ack(batch)
                    break
                except Exception:
                    # Unexpected (a bug, a full disk): skipping the batch would leave it unacknowledged
                    # until the next reconnect and hold the broker's in-flight window, so retry it.
                    logger.exception(
                        "MQTT writer failed on a batch of %d messages; retrying in %.0f s", len(batch), delay
                    )
                    if self._stopping.wait(delay):
                        return  # unacknowledged: the broker redelivers them on the next connect
                    delay = min(delay * 2, 60.0)

    def _commit_and_ack(self, batch: list[ReceivedMessage]) -> None:
        delay = 0.5
        while True:
            try:
                result: StoreResult = self._store.store(batch)
                break
            except SQLAlchemyError as error:
                if not is_transient(error):
                    # One reading the database refuses must not hold up the others: store one by one.
                    self._store.forget_patients()
                    result = self._store.store_one_by_one(batch)
                    break
                if self._stopping.is_set():
                    logger.error(
                        "database unavailable while stopping (%s); %d messages left unacknowledged for the "
                        "broker to redeliver",
                        error.__class__.__name__,
                        len(batch),
                    )
                    return
                logger.error(
                    "database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0], delay
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        self._last_commit_at = time.time()
        self._ack(batch)
        touched = self._store.take_touched_patients()
        if self.on_stored is not None and touched:
            # After the ack: re-triage is the consumer's work and must not delay the broker.
            try:
                self.on_stored(touched)
            except Exception:
                logger.exception("on_stored callback failed for %d patient(s)", len(touched))
        self._counts["stored"] += result.stored
        self._counts["duplicates"] += result.duplicates
        self._counts["rejected"] += len(result.rejected)
        self._counts["batches"] += 1
        for item, reason in result.rejected:
            logger.warning("rejected MQTT message on %s: %s", item.topic, reason)

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
