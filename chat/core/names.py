"""
Whether two user names look alike (PROTOCOL.md 3.3), and which characters
render as nothing.

This module owns L{nameSkeleton}, the key under which a registration is
refused as taken when it equals an existing user's, and L{isIgnorable}.  It
never decides what a name may hold (L{chat.core.rules} does), never touches
storage, and never fetches Unicode data at run time: all of it comes from
the two libraries below, as installed.

Libraries, and why:

  - C{precis-i18n} (RFC 8264/8265/8266, typed, maintained) gives the case
    fold and the Default_Ignorable_Code_Point property.  The fold is its
    C{NicknameCaseMapped:CaseFold} profile's mapping rules (RFC 8266 with
    Unicode default case folding: map non-ASCII spaces, case fold, NFKC),
    that is the NFKC case fold that PROTOCOL.md 3.3 asks for.  Only the
    mapping is used, not the profile's validation: what a name may hold is
    PROTOCOL.md's rule, not PRECIS's (FreeformClass refuses letters such as
    conjoining Hangul jamo that the protocol allows).  RFC 8265's
    C{UsernameCaseMapped} does not fit: it maps only full- and half-width
    forms and NFC, so C{𝐚lice} stays apart from C{alice}, and its
    IdentifierClass refuses every compatibility character.
  - C{confusable-homoglyphs} (maintained, the library DESIGN.md 5c names)
    ships Unicode's confusables.txt (the TS #39 data, version 13.0 in
    confusable-homoglyphs 3.3) as a JSON table, but no skeleton function:
    it offers confusable I{detection} only, and its table records each
    C{source ; prototype} line in both directions.  L{_recoverPrototypes}
    recovers the one-way TS #39 mapping from that table (see there); the
    result equals confusables.txt 13.0 line for line, apart from four lines
    the library's parser skips, which L{_MISSED_BY_LIBRARY} restores.
  - Rejected: PyICU (ICU's C{SpoofChecker.getSkeleton} is the reference
    implementation, but PyICU is a source-only package that needs the ICU
    headers and a C++ compiler on every machine); C{confusables} (ships the
    raw confusables.txt, but unreleased since 2021 and its C{normalize} is
    not TS #39); young single-author packages with native code.

The skeleton is TS #39's: NFD, drop Default_Ignorable code points (as
current revisions of TS #39 do in their C{internalSkeleton}), map each
character to its prototype, NFD again; taken over the NFKC case fold, the
two steps repeated until nothing changes.  One pass is not enough because
some prototypes are capitals or not folded (Cherokee C{Ꭺ} has the
prototype C{A}, Greek C{β} the prototype C{ß}): after one pass C{Ꭺlice}
would still differ from C{alice}.  Every single code point reaches its
fixed point after at most three changing passes (and property tests find
no name that needs more than the bound of eight), so the result is
idempotent: C{nameSkeleton(nameSkeleton(x)) == nameSkeleton(x)}.
Repeating can only join names, never split them (names equal after one
pass stay equal), so it errs towards refusing a look-alike.

Known limit: the case fold comes first, as PROTOCOL.md says, so a capital
C{I} is an C{i} and C{aIice} does not collide with C{alice} (TS #39 alone
maps C{I} to C{l}).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache
from typing import Mapping, Sequence

from precis_i18n import get_profile
from precis_i18n.unicode import UnicodeData

_UCD = UnicodeData()
_FOLD = get_profile("NicknameCaseMapped:CaseFold")

_MAX_PASSES = 8
"""Far above the three any code point needs; a bound, not a tuning knob."""

_LRM = "\N{LEFT-TO-RIGHT MARK}"

_MISSED_BY_LIBRARY = {
    # confusables.txt 13.0 lines whose comment holds a line or paragraph
    # separator or a tab, which confusable-homoglyphs' parser skips.
    "\u3164": "\u1160",            # HANGUL FILLER -> HANGUL JUNGSEONG FILLER
    "\u2028": " ",                 # LINE SEPARATOR -> SPACE
    "\u2029": " ",                 # PARAGRAPH SEPARATOR -> SPACE
    "\U0001F16D": "\u33C4\t\u20DD",  # CIRCLED CC -> SQUARE CC, TAB, ENCLOSING CIRCLE
}


def isIgnorable(ch: str) -> bool:
    """
    Whether the character C{ch} has Unicode's Default_Ignorable_Code_Point
    property (fillers such as U+3164, zero-width spaces and joiners,
    variation selectors, tags, the soft hyphen): it renders as nothing, so
    it is never a letter of a name.  The data is precis-i18n's table from
    DerivedCoreProperties.txt.
    """
    return _UCD.default_ignorable(ord(ch))


def _recoverPrototypes(
        table: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, str]:
    """
    The one-way TS #39 mapping (source character to prototype string) from
    confusable-homoglyphs' two-way table.

    The library's generator reads each line C{source ; prototype} of
    confusables.txt and appends the prototype to the source's list and the
    source to the prototype's list, taking both from the line's comment,
    where right-to-left characters are wrapped in LEFT-TO-RIGHT MARKs
    (removed here: no line of confusables.txt has that mark as a source or
    in a prototype).  In confusables.txt a source is one code point and no
    character of a prototype is itself a source.  So an entry with several
    partners, or one of several characters, is a prototype, and a
    one-character entry whose single partner is a string or has partners
    of its own is that partner's source.  That leaves pairs that only name
    each other; for those the order of the table decides: the generator
    inserts a line's source into the table before its prototype, and JSON
    keeps that order.
    """
    partners: dict[str, list[str]] = {}
    position: dict[str, int] = {}
    for index, (key, entries) in enumerate(table.items()):
        name = key.replace(_LRM, "")
        position[name] = index
        partners[name] = [entry["c"].replace(_LRM, "") for entry in entries]
    prototypes: dict[str, str] = {}
    for name, others in partners.items():
        if len(name) != 1 or len(others) != 1:
            continue
        other = others[0]
        if (len(other) > 1 or len(partners[other]) > 1
                or position[name] < position[other]):
            prototypes[name] = other
    for source, prototype in _MISSED_BY_LIBRARY.items():
        prototypes.setdefault(source, prototype)
    return prototypes


@cache
def _prototypeMap() -> dict[str, str]:
    """
    Built on first use, not at import, so that importing L{chat.core.rules}
    stays cheap: the library parses its 900 kB table when imported.
    """
    from confusable_homoglyphs.confusables import (  # type: ignore[import-untyped]  # the package has no py.typed
        confusables_data,
    )
    table: Mapping[str, Sequence[Mapping[str, str]]] = confusables_data
    return _recoverPrototypes(table)


def _caseFold(value: str) -> str:
    """The NFKC case fold: RFC 8266 NicknameCaseMapped:CaseFold mapping."""
    return _FOLD.apply_five_rules(value)


def tsSkeleton(value: str) -> str:
    """
    The confusable skeleton of Unicode TS #39 section 4, C{skeleton(X)}:
    NFD, Default_Ignorable code points removed, each character replaced by
    its prototype, NFD again.  No case fold: see L{nameSkeleton}.
    """
    prototypes = _prototypeMap()
    mapped = "".join(
        prototypes.get(ch, ch)
        for ch in unicodedata.normalize("NFD", value)
        if not isIgnorable(ch))
    return unicodedata.normalize("NFD", mapped)


@lru_cache(maxsize=4096)
def nameSkeleton(name: str) -> str:
    """
    The key under which two user names look alike: equal for C{alice},
    C{Alice}, C{аlice} (Cyrillic а), C{ａlice} (fullwidth) and C{𝐚lice}
    (mathematical bold); different for C{alice} and C{alicia}.

    L{tsSkeleton} over the NFKC case fold, repeated until it no longer
    changes (see the module docstring for why).  The result is a key to
    compare and index, never shown: it is in NFD and may be longer than
    the name (C{m} becomes C{rn}, C{ß} C{ss}).  Deterministic for a given
    installation of the two libraries; stored keys must be recomputed when
    either library's Unicode data changes.

    Cached: registrations and the text dialect's name look-ups repeat
    names, and a miss costs about 20 microseconds.
    """
    current = name
    for _ in range(_MAX_PASSES):
        following = tsSkeleton(_caseFold(current))
        if following == current:
            break
        current = following
    return current
