"""Every coded concept the built-in pipelines write, in one namespace (PS3.16).

Values and meanings follow ``pydicom.sr.codedict.codes`` where it has the
concept; the comments name the context group (CID) each comes from.  A new
pipeline adds its concepts here, so a concept is defined once whichever
pipelines use it.
"""

from __future__ import annotations

from ai_models.types import CodedConcept

__all__ = ["CODES", "MAMMOGRAPHY_VIEWS", "coded"]


def coded(value: str, scheme: str, meaning: str) -> CodedConcept:
    """A :class:`~highdicom.sr.CodedConcept` (Code Value, Coding Scheme Designator, Meaning)."""
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


class CODES:
    """Coded concepts of the built-in pipelines."""

    # -- segmentation property categories (CID 7150) and types (CID 7151) -----
    ANATOMICAL_STRUCTURE = coded("91723000", "SCT", "Anatomical Structure")
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE = coded(
        "49755003", "SCT", "Morphologically Abnormal Structure"
    )
    TISSUE = coded("85756007", "SCT", "Tissue")
    LUNG = coded("39607008", "SCT", "Lung")
    RIGHT_LUNG = coded("3341006", "SCT", "Right lung")
    LEFT_LUNG = coded("44029006", "SCT", "Left lung")
    BONE = coded("272673000", "SCT", "Bone")
    NODULE = coded("27925004", "SCT", "Nodule")
    LUNG_NODULE = coded("786838002", "SCT", "Pulmonary nodule")
    HEART = coded("80891009", "SCT", "Heart")
    BREAST = coded("76752008", "SCT", "Breast")
    MASS = coded("4147007", "SCT", "Mass")  # CID 7151 / 6102
    BRAIN = coded("12738006", "SCT", "Brain")  # Brain structure (body structure)
    LESION = coded("52988006", "SCT", "Lesion")  # CID 7159 lesion segmentation types
    EDEMA = coded("79654002", "SCT", "Edema")  # CID 7159

    # -- chest radiograph findings (CID 6102, CID 12248) ----------------------------
    OPACITY = coded("112001", "DCM", "Opacity")
    PLEURAL_EFFUSION = coded("60046008", "SCT", "Pleural effusion")
    CARDIOMEGALY = coded("287272002", "SCT", "Cardiomegaly")
    PNEUMOTHORAX = coded("36118008", "SCT", "Pneumothorax")

    # -- measurements (CID 7470) and units (UCUM) -------------------------------------
    VOLUME = coded("118565006", "SCT", "Volume")
    DIAMETER = coded("81827009", "SCT", "Diameter")
    LONG_AXIS = coded("103339001", "SCT", "Long axis")
    MM = coded("mm", "UCUM", "mm")
    MM3 = coded("mm3", "UCUM", "cubic millimeter")

    # -- laterality (CID 244) and views -------------------------------------------------
    LEFT = coded("7771000", "SCT", "Left")
    RIGHT = coded("24028007", "SCT", "Right")
    IMAGE_VIEW = coded("111031", "DCM", "Image View")

    # -- procedures reported (CID 100; LOINC mammography, CID 6050 / 6083) --------------
    CT_UNSPECIFIED = coded("25045-6", "LN", "CT unspecified body region")
    MRI_UNSPECIFIED = coded("25056-3", "LN", "MRI unspecified body region")
    PLAIN_CHEST_XRAY = coded("399208008", "SCT", "Plain chest X-ray")
    MAMMOGRAM_LEFT = coded("36627-8", "LN", "breast - left mammogram")
    MAMMOGRAM_RIGHT = coded("37774-7", "LN", "breast - right mammogram")
    MAMMOGRAM = coded("46339-8", "LN", "breast - unilateral mammogram")

    # -- qualitative evaluations ---------------------------------------------------------
    FINDING = coded("121071", "DCM", "Finding")
    VALUE_OUT_OF_RANGE = coded("114009", "DCM", "Value out of range")
    """CID 42 "Numeric Value Qualifier": why a measurement is not given."""
    ANATOMY_COVERAGE_INCOMPLETE = coded("130576", "DCM", "Anatomy coverage incomplete")
    """The images do not cover the whole structure (a qualitative evaluation
    ``Finding = Anatomy coverage incomplete``, instead of a whole-organ volume)."""


#: View Position (0018,5101) terms -> CID 4014 "View for Mammography" codes.
MAMMOGRAPHY_VIEWS: dict[str, CodedConcept] = {
    "CC": coded("399162004", "SCT", "cranio-caudal"),
    "MLO": coded("399368009", "SCT", "medio-lateral oblique"),
    "ML": coded("399260004", "SCT", "medial-lateral"),
    "LM": coded("399352003", "SCT", "latero-medial"),
    "LMO": coded("399099002", "SCT", "latero-medial oblique"),
    "XCCL": coded("399192008", "SCT", "cranio-caudal exaggerated laterally"),
    "XCCM": coded("399101009", "SCT", "cranio-caudal exaggerated medially"),
    "FB": coded("399196006", "SCT", "caudo-cranial"),
    "SIO": coded("399188001", "SCT", "superolateral to inferomedial oblique"),
    "ISO": coded("441555000", "SCT", "inferomedial to superolateral oblique"),
}
