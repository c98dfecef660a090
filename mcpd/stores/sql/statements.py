# -*- test-case-name: tests.test_sql_pack -*-
"""The lexical pre-check of a statement sent to a data source, and its placeholders.

The pre-check only makes the common refusals clear ("DROP is not a read-only statement"); the
guard is the database (`mcpd.stores.sql.sources`): a read-only connection or transaction, a
time limit, one statement per call. What the lexer (sqlparse) and a server read differently
still meets that guard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlparse
from sqlparse import tokens as T
from sqlparse.sql import Parenthesis, Statement

from mcpd.interfaces import Refused

# What sql.query runs: statements that read (EXPLAIN is sql.explain's).
QUERY_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "DESCRIBE", "DESC"})
EXPLAIN_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
# MySQL runs the text of /*! ... */ and /*M! ... */ comments, and /*+ ... */ hints can lift
# the time limit: none of them is needed to read.
_MYSQL_CODE_COMMENT = re.compile(r"/\*(?:!|M!|\+)")
# Functions that reach beyond the statement: the server's files, locks held past the call.
_REFUSED_FUNCTIONS = frozenset(
    {"LOAD_FILE", "GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS", "MASTER_POS_WAIT", "SOURCE_POS_WAIT"}
)
READ_ONLY = "the source is read-only (mcpd never changes its data or schema)"


def check_statement(sql: str, backend: str, *, explain: bool = False) -> str:
    """``sql`` without its trailing semicolon if it is one statement that reads; `Refused`
    saying why not (``backend``: ``sqlite`` or ``mysql``)."""
    if backend == "mysql" and _MYSQL_CODE_COMMENT.search(sql):
        raise Refused(
            "MySQL executable comments and hints (/*! */, /*M! */, /*+ */) are refused: they run as SQL; "
            "send the statement without them"
        )
    if backend == "mysql":
        sql = _mysql_dashes(sql)
    statements = [statement for statement in sqlparse.parse(sql) if _words(statement)]
    if not statements:
        raise Refused("sql holds no statement (only comments or blanks): send one SELECT")
    if len(statements) > 1:
        raise Refused(
            f"one statement per call: this sql holds {len(statements)} (separated by ';'); send them one at a time"
        )
    statement = statements[0]
    allowed = EXPLAIN_KEYWORDS if explain else QUERY_KEYWORDS
    first = _first_keyword(statement)
    words = _words(statement)
    if first == "EXPLAIN" and not explain:
        raise Refused("EXPLAIN is sql.explain's: call sql.explain with the statement alone")
    if first not in allowed:
        shown = first or str(words[0][1]).upper()
        what = (
            "sql.explain plans SELECT statements" if explain else "sql.query runs SELECT, WITH, VALUES, SHOW, DESCRIBE"
        )
        raise Refused(f"{shown} is refused: {READ_ONLY}; {what}")
    if first == "WITH" and statement.get_type() not in ("SELECT", "UNKNOWN"):
        raise Refused(f"WITH … {statement.get_type()} is refused: {READ_ONLY}")
    for i, (kind, value) in enumerate(words):
        if value == "INTO" and kind is not T.Name:
            raise Refused(
                "SELECT … INTO is refused: it writes a file or variables on the server; the rows come back "
                "in the result without it"
            )
        previous = words[i - 1][1] if i else None
        following = words[i + 1][1] if i + 1 < len(words) else None
        if value in ("UPDATE", "SHARE") and previous == "FOR" or value == "LOCK" and following == "IN":
            raise Refused("locking reads (FOR UPDATE, FOR SHARE, LOCK IN SHARE MODE) are refused: drop the clause")
        if value.upper() in _REFUSED_FUNCTIONS and following == "(":
            raise Refused(f"{value.upper()}() is refused: it reaches beyond the statement (files, locks)")
    return str(statement).strip().rstrip(";").strip()


def to_pyformat(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> str:
    """``sql`` with ``?`` or ``:name`` placeholders rewritten for PyMySQL (``%s``,
    ``%(name)s``) and every other ``%`` doubled; `Refused` for placeholders that do not match
    ``params`` (an array for ``?``, an object for ``:name``)."""
    named = isinstance(params, Mapping)
    parts: list[str] = []
    for token in sqlparse.parse(sql)[0].flatten():
        if token.ttype is T.Name.Placeholder:
            if token.value == "?" and not named:
                parts.append("%s")
                continue
            if token.value.startswith(":") and named:
                parts.append(f"%({token.value[1:]})s")
                continue
            want = "an object of :name values" if token.value.startswith(":") else "an array of values for ?"
            if token.value.startswith("%"):
                want = "? (with an array) or :name (with an object)"
            raise Refused(f"placeholder {token.value} needs params as {want}")
        parts.append(token.value.replace("%", "%%"))
    return "".join(parts)


def _mysql_dashes(sql: str) -> str:
    """``sql`` as MySQL reads its ``--``: a comment only before a blank or the end (sqlparse
    takes any ``--``), so ``SELECT 1 --1 INTO OUTFILE …`` is ``SELECT 1 - -1 INTO OUTFILE …``
    and is written so, for the pre-check and the server alike."""
    while True:
        offset = 0
        for kind, value in sqlparse.lexer.tokenize(sql):
            if kind in T.Comment.Single and value.startswith("--") and value[2:3] and not value[2].isspace():
                sql = f"{sql[:offset]}- -{sql[offset + 2 :]}"
                break
            offset += len(value)
        else:
            return sql


def _words(statement: Statement) -> list[tuple[Any, str]]:
    """The statement's tokens, comments and blanks left out, keywords upper-cased."""
    words = []
    for token in statement.flatten():
        if token.is_whitespace or token.ttype in T.Comment or token.ttype is T.Punctuation and token.value == ";":
            continue
        words.append((token.ttype, token.normalized.upper() if token.is_keyword else token.value))
    return words


def _first_keyword(statement: Statement) -> str | None:
    token = statement.token_first(skip_cm=True)
    while isinstance(token, Parenthesis):  # (SELECT 1) UNION (SELECT 2)
        token = token.token_next(0)[1]
    if token is None:
        return None
    if token.is_group:
        token = token.token_first(skip_cm=True)
    return token.normalized.upper() if token is not None and token.is_keyword else None
