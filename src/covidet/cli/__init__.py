"""The ``covidet`` command (Typer).

Exit codes: 0 success; 1 some input could not be processed (e.g. one unreadable image); 2 bad usage,
bad data or bad model bundle (one-line message on standard error, no traceback).

The commands live in submodules by theme (``train``, ``bundle``, ``serve``, ``admin``, ``simulate``,
``report``; shared helpers in ``_common``); this module is the command table: it registers them on
:data:`app` in the order ``covidet --help`` lists them. Entry points: the ``covidet`` console script
(:func:`main`), ``python -m covidet.cli`` and ``torchrun ... -m covidet.cli train``.
"""

from __future__ import annotations

import typer

from covidet import DISCLAIMER
from covidet.cli import admin, bundle, report, serve, simulate, train

__all__ = ["app", "main"]

app = typer.Typer(
    name="covidet",
    help=f"Early assessment of Covid-19 from chest X-rays ({DISCLAIMER}).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Registration order is the order of `covidet --help` (kept from the single-module CLI).
app.command("version")(admin.version)
app.command("train")(train.train)
app.command("evaluate")(bundle.evaluate)
app.command("predict")(bundle.predict)
app.command("calibrate")(bundle.calibrate)
app.command("pretrain")(train.pretrain)
app.command("propose-boxes")(train.propose_boxes)
app.command("export")(bundle.export)
app.add_typer(admin.devices_app, name="devices")
app.command("stats")(admin.stats)
app.command("dicom-scp")(serve.dicom_scp)
app.command("mqtt-ingest")(serve.mqtt_ingest)
app.command("mqtt-broker-files")(admin.mqtt_broker_files)
app.command("serve")(serve.serve)
app.command("simulate")(simulate.simulate)
app.command("report")(report.report)
app.add_typer(admin.users_app, name="users")
app.add_typer(admin.api_token_app, name="api-token")
app.command("demo")(serve.demo)
app.command("worker")(serve.worker)


def main() -> None:
    """Console-script entry point."""
    app()
