"""Flat SOAP records parsed without zeep's per-field machinery, to the same values.

zeep turns every element of a response into its own parse call, value object and
serialisation step: for a page of 500 citizens of 8 fields, some 9,000 Python calls per
thousand fields, ~150 us a record, most of a SOAP pull's client time
(docs/performance.md, "SOAP pull"). Most records a national database answers with are
flat: a sequence of optional, simple-typed elements (`Citizen{personal_id, full_name,
birth_date, ...}`). For such a complex type, `install(client, operation)` gives the
client's own type object a parser that reads the record's children in one pass and
converts each text with the XSD type's own `pythonvalue` (the plain forms of a date and
a dateTime with the standard library, to an equal value), so the values are zeep's (a
`datetime.date`, a `datetime`, an `int`, a `str`; None for an absent or empty (nil)
element), in zeep's own value object for the type, its fields set at once rather than
checked one by one. One difference, on purpose: a text its type cannot read (a birth date
`2020-13-45`) is kept as sent, with a warning, where zeep logs an error and gives None. The
validation then quarantines the record with that value and the reason, instead of a
record whose date silently became empty.

Anything else in a record is left to zeep, which then parses that record exactly as it did
before (and raises the same errors): an attribute on the record, an `xsi:type` on a field, an
element out of order, repeated, unknown or in another namespace, a comment, a required
element missing. The envelope, faults, WS-Security and the XML hardening (no DTD, no
entities) are zeep's throughout: only the record types are touched, on this client's own
schema objects.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from zeep import xsd
from zeep.xsd.types.simple import AnySimpleType
from zeep.xsd.valueobjects import CompoundValue

log = logging.getLogger("lgsp.connectors.soap")

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_Field = tuple[str, frozenset[str], bool, Callable[[str], Any]]  # name, tags it may carry, optional, text -> value


# The plain forms of xsd:date and xsd:dateTime, read by the standard library at a tenth of isodate's
# cost (zeep's way) to an equal value (a datetime's offset a `datetime.timezone` rather than
# isodate's class: equal, and written out the same). Any other form goes to zeep's `pythonvalue`.
_QUICK: dict[type, tuple[Callable[[str], Any], Any]] = {
    xsd.Date: (date.fromisoformat, re.compile(r"\d{4}-\d{2}-\d{2}").fullmatch),
    xsd.DateTime: (datetime.fromisoformat,
                   re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?").fullmatch),
}


def _leaf(xsd_type: AnySimpleType, field: str) -> Callable[[str], Any]:
    if type(xsd_type) is xsd.String:  # its pythonvalue is the text itself
        return str
    pythonvalue = xsd_type.pythonvalue
    type_name = type(xsd_type).__name__
    quick, plain_form = _QUICK.get(type(xsd_type), (None, None))

    def convert(text: str) -> Any:
        if plain_form is not None and plain_form(text):
            try:
                return quick(text)  # type: ignore[misc]
            except ValueError:  # a plain form but no such day (2020-13-45): zeep's way decides
                pass
        try:
            return pythonvalue(text)
        except (TypeError, ValueError):
            # zeep logs the error and gives None, and the value the peer sent is lost. The text is kept
            # instead: the validation then quarantines the record with it, its field and the reason
            log.warning("field %s: %r is not a valid xsd %s; kept as sent, for the validation to judge",
                        field, text[:100], type_name)
            return text
    return convert


def _flat_fields(xsd_type: Any) -> list[_Field] | None:
    """The record's fields if `xsd_type` is a flat record type (see the module's docstring), else None."""
    if (not isinstance(xsd_type, xsd.ComplexType) or xsd_type.attributes or getattr(xsd_type, "_array_type", None)
            or len(xsd_type.elements_nested) != 1):
        return None
    (_name, sequence), = xsd_type.elements_nested
    if type(sequence) is not xsd.Sequence or not sequence:
        return None
    fields: list[_Field] = []
    for item in sequence:
        if type(item) is not xsd.Element or item.max_occurs != 1 or not isinstance(item.type, AnySimpleType):
            return None
        qname = item.qname
        tags = frozenset({qname.text, qname.localname}) if qname.namespace else frozenset({qname.localname})
        fields.append((item.attr_name, tags, item.is_optional, _leaf(item.type, item.attr_name)))
    return fields


def _fast_parser(xsd_type: Any, fields: list[_Field]) -> Callable[..., Any]:
    zeep_parse = xsd_type.parse_xmlelement  # the bound method of the class, before it is shadowed
    value_class = xsd_type._value_class  # what zeep makes of a record; a dict would be made one again, slowly
    new = object.__new__

    def parse_xmlelement(xmlelement: Any, schema: Any = None, allow_none: bool = True, context: Any = None,
                         schema_type: Any = None) -> Any:
        children = list(xmlelement)
        if xmlelement.attrib or (schema_type is not None and schema_type is not xsd_type) or not children:
            return zeep_parse(xmlelement, schema, allow_none, context, schema_type)
        record: dict[str, Any] = {}
        at, found = 0, len(children)
        for name, tags, optional, convert in fields:
            child = children[at] if at < found else None
            if child is not None and child.tag in tags:
                if XSI_TYPE in child.attrib:  # another type than declared; zeep ignores any other attribute
                    return zeep_parse(xmlelement, schema, allow_none, context, schema_type)
                text = child.text
                record[name] = None if text is None else convert(text)
                at += 1
            elif optional:
                record[name] = None
            else:  # a required element missing: zeep's rules decide whether that is an error
                return zeep_parse(xmlelement, schema, allow_none, context, schema_type)
        if at != found:  # something zeep must judge: an unknown, repeated or out-of-order element, a comment
            return zeep_parse(xmlelement, schema, allow_none, context, schema_type)
        value = new(value_class)
        value.__values__ = record  # every declared field, in order: what CompoundValue.__init__ would hold
        return value

    return parse_xmlelement


def install(client: Any, operation: str) -> list[str]:
    """Give the flat record types in `operation`'s answer the one-pass parser; their names.

    The answer's type tree is walked from its body element; every flat complex type met is
    given the parser (on this client's schema only). Nothing is installed when the operation
    or its answer has a shape this module does not know: zeep parses it all, as before.
    """
    try:
        body = client.service._binding.get(operation).output.body
    except Exception:  # noqa: BLE001 - an operation of another style: zeep alone
        return []
    installed: list[str] = []
    seen: set[int] = set()

    def walk(element: Any) -> None:
        xsd_type = getattr(element, "type", None)
        if not isinstance(xsd_type, xsd.ComplexType) or id(xsd_type) in seen:
            return
        seen.add(id(xsd_type))
        fields = _flat_fields(xsd_type)
        if fields is not None:
            xsd_type.parse_xmlelement = _fast_parser(xsd_type, fields)
            installed.append(xsd_type.name or element.name)
            return
        for _name, child in xsd_type.elements:
            walk(child)

    if body is not None:
        walk(body)
    return installed


_SCALARS = frozenset({str, int, float, bool, type(None), Decimal, date, datetime, time})


def plain(value: Any) -> Any:
    """`zeep.helpers.serialize_object(value, dict)`: zeep's value objects as dicts, lists as lists.

    The same result, without a call (and two of CompoundValue's attribute hooks) per field.
    """
    if isinstance(value, CompoundValue):
        value = value.__values__
    elif type(value) is list:
        return [v if type(v) in _SCALARS else plain(v) for v in value]
    elif not isinstance(value, dict):
        return plain(list(value)) if isinstance(value, list) else value
    return {k: v if type(v) in _SCALARS else plain(v) for k, v in value.items()}
