"""
What a name, a password or a text may contain (PROTOCOL.md 3.3).

Each check raises L{InvalidValue} with a message a person can act on.
The rules keep every text-dialect event on one line: no value carries a
control character, apart from a tab inside a chat text or a description.
The rules are pure checks of one value; whether a name is taken is the
database's to say, never this module's.
"""

from __future__ import annotations

import re

from chat.core.errors import InvalidValue
from chat.core.names import isIgnorable

MAX_USER_NAME = 32
MAX_GROUP_NAME = 50
MAX_DESCRIPTION = 200
MAX_PASSWORD = 128
MAX_TEXT = 4000
MAX_ID = 2**63 - 1
"""Ids are SQL BIGINTs; anything larger cannot name a row."""

_ASCII_DIGITS = frozenset("0123456789")


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; one
# regular expression checks a whole chat text in C, where a per-character
# unicodedata lookup was a visible share of the chat path.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_TAB = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _hasControl(value: str, allowTab: bool) -> bool:
    pattern = _CONTROL_BUT_TAB if allowTab else _CONTROL
    return pattern.search(value) is not None


def _checkLength(value: str, what: str, longest: int) -> None:
    if not 1 <= len(value) <= longest:
        raise InvalidValue(f"{what} must be 1 to {longest} characters")


def checkUserName(name: str) -> str:
    """
    A user name: 1 to 32 letters (any script), ASCII digits, C{_ . -},
    starting with a letter so that it never looks like an id.

    A character that renders as nothing (Default_Ignorable_Code_Point) is
    not a letter, though the Hangul fillers (U+3164, U+115F, U+1160,
    U+FFA0) are letters to Unicode: a name made of them would look empty.
    """
    _checkLength(name, "a user name", MAX_USER_NAME)
    if not name.isascii():  # no ASCII character is ignorable
        for ch in name:
            if isIgnorable(ch):
                raise InvalidValue(
                    f"a user name may not hold U+{ord(ch):04X}, which shows"
                    " as nothing")
    if not name[0].isalpha():
        raise InvalidValue("a user name must start with a letter")
    for ch in name[1:]:
        if not (ch.isalpha() or ch in _ASCII_DIGITS or ch in "_.-"):
            raise InvalidValue(
                "a user name may hold only letters, digits, '_', '.' and '-'")
    return name


def checkPassword(password: str) -> str:
    _checkLength(password, "a password", MAX_PASSWORD)
    if _hasControl(password, allowTab=False) or any(
            ch.isspace() for ch in password):
        raise InvalidValue(
            "a password may not contain spaces or control characters")
    return password


def checkGroupName(name: str) -> str:
    _checkLength(name, "a group name", MAX_GROUP_NAME)
    if any(ch.isspace() or ch == ":" for ch in name) or not name.isprintable():
        raise InvalidValue(
            "a group name is one word of printable characters, without ':'")
    return name


def checkDescription(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidValue(
            f"a description is at most {MAX_DESCRIPTION} characters")
    if _hasControl(description, allowTab=True):
        raise InvalidValue("a description may not contain control characters")
    return description


def checkText(text: str) -> str:
    _checkLength(text, "a message", MAX_TEXT)
    if _hasControl(text, allowTab=True):
        raise InvalidValue(
            "a message may not contain line breaks or control characters")
    return text


def isIdShaped(ref: str) -> bool:
    """
    Whether a text-dialect argument names an id rather than a user name.
    """
    return bool(ref) and all(ch in _ASCII_DIGITS for ch in ref)


def parseId(digits: str) -> int:
    """
    The id an all-digits argument names.  One too large for any row comes
    back as C{MAX_ID + 1}, which the service reports as not found, without
    feeding a huge string to L{int}.
    """
    if len(digits) > 20:
        return MAX_ID + 1
    return min(int(digits), MAX_ID + 1)
