"""Assessment: triage of an analysed image with the patient's recent vital signs.

Pure Python (no torch, no database). The API lives in :mod:`covidet.assessment.triage` (import from
there: re-exporting the function ``triage`` here would shadow the submodule of the same name). The rule
table is in ``docs/triage.md``.
"""

__all__: list[str] = []
