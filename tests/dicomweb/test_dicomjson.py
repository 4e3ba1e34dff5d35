"""DICOM JSON with bulk data references, and the Accept parsing, on their own: a binary value inside a
sequence item gets a BulkDataURI whose tag path leads back to it; quoted commas and semicolons in
media type parameters do not split ranges."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from covidet.api.dicomweb.dicomjson import element_at, metadata_json
from covidet.api.dicomweb.media import MultipartBody, parse_accept


def test_bulk_values_are_referenced_by_tag_path_and_resolve_back() -> None:
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x01" * 4096)  # private binary value inside a sequence item
    dataset = Dataset()
    dataset.PatientID = "P-1"
    dataset.add_new(0x00091001, "LO", "covidet test")
    dataset.add_new(0x00091002, "SQ", Sequence([Dataset(), item]))
    dataset.add_new(0x00091003, "OB", b"\x02" * 16)  # short: inline
    encoded = metadata_json(dataset, "http://h/i", pixel_vr="OW")
    nested = encoded["00091002"]["Value"][1]["00091010"]
    assert nested == {"vr": "OB", "BulkDataURI": "http://h/i/bulkdata/00091002/1/00091010"}
    assert element_at(dataset, "00091002/1/00091010").value == b"\x01" * 4096
    assert encoded["00091003"]["InlineBinary"]
    assert encoded["7FE00010"] == {"vr": "OW", "BulkDataURI": "http://h/i/bulkdata/7FE00010"}
    assert list(encoded) == sorted(encoded)
    for bad in ("00091002/2/00091010", "00091002/x/00091010", "00091002/1", "0009100", "../00100020"):
        assert element_at(dataset, bad) is None, bad


def test_accept_ranges_keep_quoted_parameters_whole() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        'multipart/related; type="image/jls,x"; q=0.9, text/html; q=0'
    )
    assert [(r.media_type, r.params.get("type"), r.quality) for r in ranges] == [
        ("multipart/related", "image/jls,x", 0.9),
        ("multipart/related", "application/dicom", 0.5),
    ]
    assert ranges[1].params["transfer-syntax"] == "*"
    assert parse_accept(None)[0].matches("image/png") and parse_accept("image/*")[0].matches("image/jpeg")
    body = MultipartBody("application/octet-stream")
    built = body.build([("application/octet-stream", b"abc")])
    dash = f"--{body.boundary}".encode()
    assert built == dash + b"\r\nContent-Type: application/octet-stream\r\n\r\nabc\r\n" + dash + b"--\r\n"
