# -*- test-case-name: tests.test_catalog -*-
"""Prompts: named message templates with arguments, declared once in a pack like tools.

A prompt handler takes the request context and the arguments (strings) and returns a string
(one user text message), a list of messages, or a dict with ``messages`` (and optionally
``description``) (2025-11-25 server/prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mcpd.tools.api import TOOL_NAME

PromptHandler = Callable[..., Any]


@attrs.frozen
class PromptArgument:
    """One argument of a prompt; ``complete(ctx, value, context_arguments)`` suggests values for
    completion/complete."""

    name: str
    description: str | None = None
    required: bool = False
    title: str | None = None
    complete: Callable[[Any, str, Mapping[str, str]], Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.title is not None:
            out["title"] = self.title
        if self.description is not None:
            out["description"] = self.description
        if self.required:
            out["required"] = True
        return out


def _check_name(_instance: object, _attribute: object, name: str) -> None:
    if not TOOL_NAME.match(name):
        raise ValueError(f"prompt name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")


@attrs.frozen
class Prompt:
    """One prompt, declared once."""

    name: str = attrs.field(validator=_check_name)
    handler: PromptHandler
    description: str | None = None
    title: str | None = None
    arguments: tuple[PromptArgument, ...] = ()
    blocking: bool = False

    @property
    def descriptor(self) -> dict[str, Any]:
        """The `Prompt` object as prompts/list shows it."""
        out: dict[str, Any] = {"name": self.name}
        if self.title is not None:
            out["title"] = self.title
        if self.description is not None:
            out["description"] = self.description
        if self.arguments:
            out["arguments"] = [argument.to_json() for argument in self.arguments]
        return out

    def argument(self, name: str) -> PromptArgument | None:
        """The declared argument called ``name``."""
        return next((argument for argument in self.arguments if argument.name == name), None)

    def missing(self, arguments: Mapping[str, Any]) -> list[str]:
        """Required arguments absent from ``arguments``."""
        return [a.name for a in self.arguments if a.required and a.name not in arguments]


def prompt_result(prompt: Prompt, value: Any) -> dict[str, Any]:
    """Shape what a prompt handler returned as a `GetPromptResult`."""
    if isinstance(value, str):
        result: dict[str, Any] = {"messages": [user_text(value)]}
    elif isinstance(value, list):
        result = {"messages": value}
    elif isinstance(value, dict) and "messages" in value:
        result = dict(value)
    else:
        raise TypeError(f"prompt {prompt.name} returned {type(value).__name__}; expected str, list or dict")
    if prompt.description is not None:
        result.setdefault("description", prompt.description)
    return result


def user_text(text: str) -> dict[str, Any]:
    """A user `PromptMessage` holding one text block."""
    return {"role": "user", "content": {"type": "text", "text": text}}
