# -*- test-case-name: tests.test_catalog -*-
"""Resources and resource templates, declared once in a pack like tools.

A resource is a URI with a reader; a template is an RFC 6570 URI template (level 1 ``{var}``
and reserved ``{+var}`` expansions) whose reader receives the variables it matched
(2025-11-25 server/resources). Readers take the request context and return text (``str``),
binary data (``bytes``), a contents object, or a list of those; blocking readers run in the
thread pool like blocking tools.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

Reader = Callable[..., Any]
Completer = Callable[[Any, str, Mapping[str, str]], Any]

_VARIABLE = re.compile(r"\{(\+?)([A-Za-z0-9_.]+)\}")


def _check_uri(_instance: object, _attribute: object, uri: str) -> None:
    # 2025-11-25 server/resources §Resource: a URI with a scheme.
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        raise ValueError(f"resource URI {uri!r} needs a scheme (e.g. file://, https://, mcpd://)")


def _descriptor(fields: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {key: value for key, value in fields if value is not None}


@attrs.frozen
class Resource:
    """A readable resource at a fixed URI."""

    uri: str = attrs.field(validator=_check_uri)
    name: str
    reader: Reader
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    size: int | None = None
    annotations: Mapping[str, Any] | None = None
    blocking: bool = False

    @property
    def descriptor(self) -> dict[str, Any]:
        """The `Resource` object as resources/list shows it."""
        return _descriptor(
            (
                ("uri", self.uri),
                ("name", self.name),
                ("title", self.title),
                ("description", self.description),
                ("mimeType", self.mime_type),
                ("size", self.size),
                ("annotations", dict(self.annotations) if self.annotations else None),
            )
        )


@attrs.frozen
class ResourceTemplate:
    """A family of resources named by a URI template; ``completions`` map a variable to a
    completer ``(ctx, value, context_arguments) -> list[str]`` (or a Deferred of one) for
    completion/complete; ``ctx`` is the request context (``ctx.tenant``, ``ctx.store(I)``)."""

    uri_template: str = attrs.field(validator=_check_uri)
    name: str
    reader: Reader
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    annotations: Mapping[str, Any] | None = None
    completions: Mapping[str, Completer] = attrs.field(factory=dict)
    blocking: bool = False
    # Subscriptions (resources/subscribe, subscriptions/listen) only for a caller that may read
    # the resource now: for records that some callers of a tenant may not see.
    readers_only: bool = False
    _pattern: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_pattern", template_pattern(self.uri_template))

    @property
    def variables(self) -> tuple[str, ...]:
        """The template's variable names, in order."""
        return tuple(name for _plus, name in _VARIABLE.findall(self.uri_template))

    def match(self, uri: str) -> dict[str, str] | None:
        """The variables ``uri`` gives this template, or None when it does not fit."""
        found = self._pattern.match(uri)
        return found.groupdict() if found else None

    @property
    def descriptor(self) -> dict[str, Any]:
        """The `ResourceTemplate` object as resources/templates/list shows it."""
        return _descriptor(
            (
                ("uriTemplate", self.uri_template),
                ("name", self.name),
                ("title", self.title),
                ("description", self.description),
                ("mimeType", self.mime_type),
                ("annotations", dict(self.annotations) if self.annotations else None),
            )
        )


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching the URIs a level-1 (or ``{+var}``) template expands to."""
    parts: list[str] = []
    position = 0
    for found in _VARIABLE.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        reserved, name = found.groups()
        if not name.isidentifier():
            # RFC 6570 also allows names like ``a.b`` or ``1``; mcpd hands variables to handlers
            # by name, so it takes identifiers only, and says so when the pack is declared.
            raise ValueError(f"URI template {template!r}: variable {name!r} must be a name like user_id")
        parts.append(f"(?P<{name}>{'.+' if reserved else '[^/?#&]+'})")
        position = found.end()
    parts.append(re.escape(template[position:]))
    return re.compile("^" + "".join(parts) + "$")


def resource_contents(uri: str, mime_type: str | None, value: Any) -> list[dict[str, Any]]:
    """Shape what a reader returned as `ReadResourceResult.contents`."""
    values = value if isinstance(value, list) else [value]
    contents = []
    for item in values:
        if isinstance(item, dict):
            entry = dict(item)
            entry.setdefault("uri", uri)
        elif isinstance(item, (bytes, bytearray)):
            entry = {"uri": uri, "blob": base64.b64encode(bytes(item)).decode("ascii")}
        elif isinstance(item, str):
            entry = {"uri": uri, "text": item}
        else:
            raise TypeError(f"a resource reader returned {type(item).__name__}; expected str, bytes or dict")
        if mime_type is not None:
            entry.setdefault("mimeType", mime_type)
        contents.append(entry)
    return contents


def completion_values(values: Any) -> dict[str, Any]:
    """A completer's answer as `CompleteResult.completion` (at most 100 values, 2025-11-25
    server/utilities/completion)."""
    listed = [str(value) for value in (values or [])]
    completion: dict[str, Any] = {"values": listed[:100], "total": len(listed), "hasMore": len(listed) > 100}
    return completion
