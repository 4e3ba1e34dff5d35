"""Coded concepts of covidet's DICOM Structured Reports (TID 1500), in one place.

Standard codes are taken from pydicom's code dictionary (``pydicom.sr.codedict.codes``) where it has
them; SNOMED CT concepts it lacks (COVID-19, pneumonia) are written out with the same values as the FHIR
report (:data:`covidet.reports.fhir.LABEL_CODES`), so both reports say the same thing. What no
standard names (the radiologist's per-box decision, covidet's probability unit annotation aside) lives
in the private coding scheme :data:`COVIDET_SCHEME` (``99COVIDET``), which every SR declares in its
Coding Scheme Identification Sequence. See ``docs/dicom-sr.md`` for the table.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from covidet.domain import Label
from covidet.reports.fhir_codes import LABEL_CODES
from covidet.store.models import ReviewAction

__all__ = [
    "CERTAINTY_OF_FINDING",
    "COMMENT",
    "COVIDET_SCHEME",
    "COVIDET_SCHEME_ITEM",
    "IMPRESSION",
    "LABEL_CONCEPTS",
    "LUNG",
    "PROBABILITY_UNIT",
    "PROCEDURE_CHEST_XRAY",
    "QUALITATIVE_EVALUATIONS",
    "REVIEW_ACTION",
    "REVIEW_ACTION_CONCEPTS",
    "SCORE_UNIT",
    "label_of",
]

#: Private coding scheme designator: PS3.16 reserves designators starting with "99" for local schemes.
COVIDET_SCHEME = "99COVIDET"
COVIDET_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=COVIDET_SCHEME,
    name="covidet local codes",
    responsible_organization="covidet (research software, not for clinical use)",
)

# FHIR system URI -> DICOM coding scheme designator (PS3.16 Table 8-1).
_DESIGNATORS = {"http://snomed.info/sct": "SCT"}
# Code Meaning is an LO (64 characters); the FHIR display of COVID-19 (the SNOMED CT fully specified
# name, 65 characters) does not fit, so the SR uses the SNOMED CT synonym "COVID-19".
_MEANINGS = {Label.COVID19: "COVID-19"}


def _from_fhir(label: Label, coding: dict[str, str]) -> CodedConcept:
    meaning = _MEANINGS.get(label, coding["display"])
    return CodedConcept(coding["code"], _DESIGNATORS[coding["system"]], meaning)


#: SNOMED CT concept of each class, the codes of the FHIR report: COVID-19 840539006 "Disease caused by
#: severe acute respiratory syndrome coronavirus 2" (meaning "COVID-19" here), Pneumonia 233604007,
#: Normal 17621005 (the qualifier value, pydicom's ``codes.SCT.Normal``).
LABEL_CONCEPTS: dict[Label, CodedConcept] = {
    label: _from_fhir(label, coding) for label, coding in LABEL_CODES.items()
}

#: (121073, DCM, "Impression"): concept name of the image-level class (a qualitative evaluation).
IMPRESSION = CodedConcept.from_code(codes.DCM.Impression)
#: (111012, DCM, "Certainty of Finding"): concept name of each box's detector score (as CAD reports use).
CERTAINTY_OF_FINDING = CodedConcept.from_code(codes.DCM.CertaintyOfFinding)
#: (39607008, SCT, "Lung"): finding site of every box.
LUNG = CodedConcept.from_code(codes.SCT.Lung)
#: (121106, DCM, "Comment"): free text (the disclaimer, the reviewer's comment).
COMMENT = CodedConcept.from_code(codes.DCM.Comment)
#: (C0034375, UMLS, "Qualitative Evaluations"): TID 1500 row 11, the document-level container.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: (36554-4, LN, "XR Chest Single view"): procedure reported, as the FHIR report's code.
PROCEDURE_CHEST_XRAY = CodedConcept("36554-4", "LN", "XR Chest Single view")

#: UCUM "{probability}": a dimensionless number (unity) annotated as a probability in [0, 1].
PROBABILITY_UNIT = CodedConcept("{probability}", "UCUM", "probability")
#: UCUM "1" (pydicom ``codes.UCUM.NoUnits``): the detector's calibrated score in [0, 1].
SCORE_UNIT = CodedConcept.from_code(codes.UCUM.NoUnits)

#: Concept name of the radiologist's decision on the AI result (no standard code says "reviewer action").
REVIEW_ACTION = CodedConcept("review-action", COVIDET_SCHEME, "Reviewer action on AI result")
REVIEW_ACTION_CONCEPTS: dict[ReviewAction, CodedConcept] = {
    ReviewAction.CONFIRM: CodedConcept("confirm", COVIDET_SCHEME, "AI result confirmed"),
    ReviewAction.REJECT: CodedConcept("reject", COVIDET_SCHEME, "AI result rejected"),
    ReviewAction.RELABEL: CodedConcept("relabel", COVIDET_SCHEME, "AI result relabelled"),
    ReviewAction.ADD: CodedConcept("add", COVIDET_SCHEME, "Finding added by reviewer"),
    ReviewAction.DELETE: CodedConcept("delete", COVIDET_SCHEME, "AI result dropped as duplicate"),
}


def label_of(concept: CodedConcept) -> Label:
    """The :class:`Label` of a class concept read back from an SR.

    Raises:
        ValueError: the concept is none of :data:`LABEL_CONCEPTS`.
    """
    for label, known in LABEL_CONCEPTS.items():
        if known == concept:
            return label
    raise ValueError(f"{concept.scheme_designator} {concept.value} is not a covidet class")
