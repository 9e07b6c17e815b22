"""A faster content-tree search for highdicom's SR constructors (PS3.3 C.17.3).

highdicom's ``find_content_items`` walks an SR content tree and, for every
item it visits, builds a validated ``ContentItem`` and ``CodedConcept`` just
to compare the item's concept name, value type and relationship type.  The
SR constructors and the TID 1500 templates call it again and again on
growing trees (about ten times per measurement group, twice over the whole
document for the evidence), so a report with a hundred findings spends most
of its time there.

:func:`find_content_items` gives the same items in the same order (pre-order,
as highdicom) comparing the attributes directly; the concept name is compared
as highdicom compares it (:class:`pydicom.sr.coding.Code` equality: value,
coding scheme designator with SRT mapped to SCT, and scheme version).
:func:`install` puts it in place of highdicom's in the modules that use it;
it does nothing (and says so in the log) when highdicom's function does not
have the signature this one replaces.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

from highdicom.sr.enum import RelationshipTypeValues, ValueTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

logger = logging.getLogger(__name__)

__all__ = ["find_content_items", "install", "installed"]

#: The modules of highdicom that bind ``find_content_items`` by name.
_MODULES = (
    "highdicom.sr.utils", "highdicom.sr.sop", "highdicom.sr.templates", "highdicom.sr.content"
)
_PARAMETERS = ["dataset", "name", "value_type", "relationship_type", "recursive"]

_original: Any = None


def _code_value(name_code: Dataset) -> str:
    for keyword in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        value = name_code.get(keyword)
        if value is not None:
            return str(value)
    raise AttributeError("Concept Name Code Sequence item without a code value")


def find_content_items(
    dataset: Dataset,
    name: Any = None,
    value_type: ValueTypeValues | str | None = None,
    relationship_type: RelationshipTypeValues | str | None = None,
    recursive: bool = False,
) -> list[Dataset]:
    """Content items of ``dataset`` matching a query, as highdicom's
    ``highdicom.sr.utils.find_content_items`` finds them.

    Raises
    ------
    AttributeError
        ``dataset`` has no Content Sequence.
    """
    if not hasattr(dataset, "ContentSequence"):
        raise AttributeError("Data set does not contain a Content Sequence attribute.")
    wanted_type = None if value_type is None else ValueTypeValues(value_type).value
    wanted_relationship = (
        None if relationship_type is None else RelationshipTypeValues(relationship_type).value
    )
    found: list[Dataset] = []

    def matches(item: Dataset) -> bool:
        if wanted_type is not None and item.ValueType != wanted_type:
            return False
        if wanted_relationship is not None and item.get("RelationshipType") != wanted_relationship:
            return False
        if name is None:
            return True
        code = item.ConceptNameCodeSequence[0]
        this = Code(_code_value(code), code.CodingSchemeDesignator, code.CodeMeaning)
        return bool(Code.__eq__(this, name))

    def walk(node: Dataset) -> None:
        for item in node.ContentSequence:
            if matches(item):
                found.append(item)
            if recursive and "ContentSequence" in item:
                walk(item)

    walk(dataset)
    return found


def installed() -> bool:
    """Whether highdicom uses :func:`find_content_items` now."""
    utils = importlib.import_module("highdicom.sr.utils")
    return utils.find_content_items is find_content_items


def install() -> bool:
    """Use :func:`find_content_items` in highdicom's SR modules.

    Returns whether it is in place.  Idempotent; leaves highdicom alone when
    its function's parameters are not the ones this one mirrors.
    """
    global _original
    utils = importlib.import_module("highdicom.sr.utils")
    current = utils.find_content_items
    if current is find_content_items:
        return True
    if list(inspect.signature(current).parameters) != _PARAMETERS:
        logger.info("highdicom's find_content_items changed; its own search is used")
        return False
    _original = current
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        if getattr(module, "find_content_items", None) is current:
            module.find_content_items = find_content_items  # type: ignore[attr-defined]
    return True


def original() -> Any:
    """highdicom's own function (for comparisons in tests)."""
    if _original is not None:
        return _original
    return importlib.import_module("highdicom.sr.utils").find_content_items
