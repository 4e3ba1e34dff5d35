"""The ingest modules split in issue 20 keep their old import paths: every name their ``__all__``
promised still imports from there, and it is the same object as in the module that now holds it."""

from __future__ import annotations

import importlib

import pytest

from covidet.ingest import dicom_handlers, dicom_scp, mqtt, mqtt_subscriber, mqtt_writer


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "covidet.ingest.dicom_scp",
            [
                "ACCEPTED_TRANSFER_SYNTAXES",
                "DEFAULT_MAX_PDU",
                "DEFAULT_PORT",
                "DicomReceiver",
                "StoreStatus",
                "handle_association_request",
                "handle_echo",
                "handle_store",
                "set_tcp_nodelay",
            ],
        ),
        (
            "covidet.ingest.mqtt_subscriber",
            ["OVERSIZE_KEPT_BYTES", "IngestStats", "VitalsSubscriber", "describe_connect_error"],
        ),
        ("covidet.ingest.mqtt", ["IngestStats", "VitalsSubscriber"]),
    ],
)
def test_the_names_of_the_old_modules_still_import(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)]
    assert missing == []
    assert set(names) <= set(imported.__all__)


def test_the_old_paths_name_the_moved_objects() -> None:
    for name in ("StoreStatus", "handle_echo", "handle_store", "set_tcp_nodelay"):
        assert getattr(dicom_scp, name) is getattr(dicom_handlers, name)
    assert mqtt_subscriber.IngestStats is mqtt_writer.IngestStats is mqtt.IngestStats
    assert mqtt.VitalsSubscriber is mqtt_subscriber.VitalsSubscriber
