# -*- test-case-name: tests.test_sql_pack -*-
"""The lexical pre-check of a statement sent to a data source, and its placeholders.

Both parse with sqlparse, tens of milliseconds for a long statement: they run in the source's
threads, never on the reactor.

The pre-check makes the common refusals clear ("DROP is not a read-only statement"); the
guard is the database (`mcpd.stores.sql.sources`): a read-only connection or transaction, a
time limit, one statement per call. On MySQL/MariaDB the pre-check is part of the boundary too
(``SET STATEMENT … FOR``, ``KILL``, ``SET ROLE`` and ``INTO OUTFILE`` run in a read-only
transaction), so there the statement is first read by the server's own lexical rules
(`_mysql_view`: where strings and comments end) and the checks run on what the server will see;
anything those rules leave in doubt is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlparse
from sqlparse import tokens as T
from sqlparse.exceptions import SQLParseError
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
_BLANKS = " \t\n\r"
# MySQL/MariaDB SHOW statements sql.query runs, by their first word (after FULL, GLOBAL, SESSION,
# EXTENDED): the schema, this session's own warnings and profiles, and the server's settings and
# counters. Left out, among others: SHOW EXPLAIN/ANALYZE FOR (another session's running
# statement, its values bound), PROCESSLIST, ENGINE … STATUS (InnoDB's shows other transactions'
# statements), GRANTS and CREATE USER (the source user's password hash), BINLOG/RELAYLOG EVENTS
# (every write, with its values), the replication and user/client statistics forms.
_SHOWN = frozenset(
    {
        "TABLES", "COLUMNS", "FIELDS", "INDEX", "INDEXES", "KEYS", "DATABASES", "SCHEMAS", "TABLE", "TRIGGERS",
        "EVENTS", "PROCEDURE", "FUNCTION", "PACKAGE", "OPEN", "STATUS", "VARIABLES", "WARNINGS", "ERRORS",
        "COUNT", "CHARACTER", "CHARSET", "COLLATION", "ENGINES", "STORAGE", "PLUGINS", "PRIVILEGES", "PROFILE",
        "PROFILES", "LOCALES",
    }
)  # fmt: skip
_SHOW_CREATED = frozenset(
    {"TABLE", "VIEW", "DATABASE", "SCHEMA", "PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "SEQUENCE", "PACKAGE"}
)
_SHOW_MODIFIERS = frozenset({"FULL", "GLOBAL", "SESSION", "EXTENDED"})
# DESCRIBE words that make it an EXPLAIN (DESC SELECT …, DESC FORMAT=JSON FOR CONNECTION n).
_DESCRIBE_PLAN = frozenset(
    {"SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "REPLACE", "EXTENDED", "PARTITIONS"}
)
_DESCRIBE_ELSEWHERE = frozenset({"FOR", "FORMAT", "CONNECTION", "ANALYZE", "EXPLAIN"})
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
        sql, skeleton = _mysql_view(sql)
        _check_words(skeleton, explain, mysql=True)
        return sql
    return _check_words(sql, explain, mysql=False)


def _check_words(sql: str, explain: bool, *, mysql: bool) -> str:
    """``sql`` (trailing semicolon dropped) if sqlparse reads one statement that reads."""
    statements = [statement for statement in _parsed(sql) if _words(statement)]
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
    if first in ("SHOW", "DESC", "DESCRIBE"):
        _check_show(first, [value.upper() for _kind, value in words])
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
        if mysql and "PROCESSLIST" in value.upper():
            raise Refused(
                "the process list is refused: it shows the statements of every caller sharing the source's user"
            )
    return str(statement).strip().rstrip(";").strip()


def _check_show(first: str, words: list[str]) -> None:
    """`Refused` for the SHOW and DESCRIBE forms that reach past the schema and the server's
    settings: another session's statements, the source user's credentials."""
    if first != "SHOW":
        if len(words) > 1 and (words[1] in _DESCRIBE_PLAN or words[1] == "(") or _DESCRIBE_ELSEWHERE & set(words):
            raise Refused(
                f"{first} is sql.query's for a table's columns ({first} name); the plan of a statement is "
                "sql.explain's, and another connection's plan (FOR CONNECTION) is refused: it shows that "
                "caller's statement and values"
            )
        return
    rest = words[1:]
    while rest and rest[0] in _SHOW_MODIFIERS:
        rest = rest[1:]
    if rest and (rest[0] in _SHOWN or rest[0] == "CREATE" and rest[1:2] and rest[1] in _SHOW_CREATED):
        return
    shown = " ".join(words[:3])
    raise Refused(
        f"{shown} is refused: it shows more than this database's schema and the server's settings (other "
        "callers' statements and values, the source user's grants or password); sql.query runs SHOW TABLES, "
        "COLUMNS, INDEX, CREATE TABLE/VIEW, TABLE STATUS, STATUS, VARIABLES, WARNINGS and the like"
    )


def to_pyformat(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> str:
    """``sql`` with ``?`` or ``:name`` placeholders rewritten for PyMySQL (``%s``,
    ``%(name)s``) and every other ``%`` doubled; `Refused` for placeholders that do not match
    ``params`` (an array for ``?``, an object for ``:name``)."""
    named = isinstance(params, Mapping)
    parts: list[str] = []
    for token in _parsed(sql)[0].flatten():
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


def _parsed(sql: str) -> tuple[Statement, ...]:
    """``sqlparse.parse(sql)``; `Refused` past what sqlparse reads (10,000 tokens in one list,
    parentheses 100 deep), which is work enough for a thread (about 0.1 s per 30 KB)."""
    try:
        return tuple(sqlparse.parse(sql))
    except SQLParseError:
        raise Refused(
            "the statement is too long to check (more than 10,000 tokens, or parentheses nested more than 100 "
            "deep): pass the values as params (WHERE id IN (?, ?, …) with an array, or a join) and split it up"
        ) from None


def _mysql_view(sql: str) -> tuple[str, str]:
    """``sql`` as MySQL/MariaDB will read it (default ``sql_mode``): the text to send (``--``
    not before a blank written ``- -``, trailing semicolon and blanks dropped), and its skeleton
    for sqlparse, where comments are blanks, every string ``''`` and every other character sqlparse
    could read otherwise (``$``, non-ASCII) ``_``.

    `Refused` where the two could disagree: a backslash (an escape in a MySQL string, sqlparse
    reads ``'\\'`` otherwise), control characters and a bare carriage return (MySQL ends a ``#``
    or ``-- `` comment only at a line feed), square brackets, an unterminated string or comment.
    """
    if "\\" in sql:
        raise Refused(
            "backslashes are refused on MySQL/MariaDB (they escape differently there): pass the value as a parameter"
        )
    text: list[str] = []
    skeleton: list[str] = []
    end = 0  # len(text) after the statement's last character (not a blank, nor ';' and after)
    after_semicolon = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            close = i + 1
            while True:
                close = sql.find(c, close)
                if close < 0:
                    raise Refused(f"an unterminated {c} quote: close it (double a {c} inside it)")
                if sql[close + 1 : close + 2] != c:
                    break
                close += 2
            literal = sql[i : close + 1]
            _no_controls(literal, "a string", strings=True)
            text.append(literal)
            skeleton.append(literal if c == "`" else "''")  # sqlparse reads `names` alike
            i = close + 1
        elif c == "#" or sql.startswith("--", i) and (i + 2 == n or ord(sql[i + 2]) <= 32):
            close = sql.find("\n", i)
            close = n if close < 0 else close
            _no_controls(sql[i : close + 1], "a comment")
            text.append(sql[i:close])
            skeleton.append(" ")
            i = close
            end = end if after_semicolon else len(text)
            continue
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close < 0:
                raise Refused("an unterminated /* comment: close it with */")
            _no_controls(sql[i : close + 2], "a comment")
            text.append(sql[i : close + 2])
            skeleton.append(" ")
            i = close + 2
            end = end if after_semicolon else len(text)
            continue
        else:
            i += 1
            if c in "[]":
                raise Refused("square brackets are not MySQL syntax: quote names with `backticks`")
            if c == "-" and sql.startswith("-", i):
                c = "- "  # minus, then a minus: not a comment to MySQL
            elif ord(c) < 32 or ord(c) == 127:
                _no_controls(sql[i - 1 : i + 1] if c == "\r" else c, "a statement")
            text.append(c)
            skeleton.append(c if c.isascii() and c != "$" else "_")
            if c in _BLANKS:
                continue
            if c == ";":
                after_semicolon = True
                continue
        end = len(text)
        after_semicolon = False
    return "".join(text[:end]).strip(_BLANKS), "".join(skeleton)


def _no_controls(text: str, where: str, *, strings: bool = False) -> None:
    """`Refused` for a control character in ``text`` (tab and line feed aside; a carriage
    return only before a line feed, and anywhere in a string)."""
    for j, c in enumerate(text):
        if c in "\t\n" or c == "\r" and (strings or text[j + 1 : j + 2] == "\n"):
            continue
        if ord(c) < 32 or ord(c) == 127:
            raise Refused(
                f"control character {c!r} in {where} is refused on MySQL/MariaDB (it ends comments "
                "differently there): use spaces and line feeds"
            )


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
