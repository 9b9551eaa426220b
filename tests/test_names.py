"""
Tests for L{chat.core.names}: which user names look alike (the TS #39
skeleton over the NFKC case fold) and which characters render as nothing
(PROTOCOL.md 3.3).
"""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chat.core import rules
from chat.core import names
from chat.core.names import isIgnorable, nameSkeleton, tsSkeleton
from chat.core.errors import InvalidValue

nameCharacters = st.characters(
    categories=("Lu", "Ll", "Lt", "Lm", "Lo", "Nd"), include_characters="_.-")
"""What PROTOCOL.md 3.3 lets into a name, and a little more (any digit)."""

anyNames = st.text(nameCharacters, min_size=1, max_size=32)


class LookAlikeTests(SynchronousTestCase):
    """
    L{nameSkeleton} is equal for names that look alike and different for
    names that do not.
    """

    def assertAlike(self, *variants: str) -> None:
        skeletons = {nameSkeleton(name) for name in variants}
        self.assertEqual(len(skeletons), 1, (variants, skeletons))

    def assertDifferent(self, one: str, other: str) -> None:
        self.assertNotEqual(nameSkeleton(one), nameSkeleton(other))

    def test_protocolExamples(self) -> None:
        """
        Case, Cyrillic а (U+0430), fullwidth ａ (U+FF41) and mathematical
        bold 𝐚 (U+1D41A) all give one skeleton: PROTOCOL.md's examples.
        """
        self.assertAlike("alice", "Alice", "ALICE", "\u0430lice",
                         "\uff41lice", "\U0001d41alice", "ａｌｉｃｅ")

    def test_skeletonOfPlainName(self) -> None:
        """A plain lower-case ASCII name without look-alikes is itself."""
        self.assertEqual(nameSkeleton("alice"), "alice")

    def test_differentNames(self) -> None:
        """Genuinely different names keep different skeletons."""
        self.assertDifferent("alice", "alicia")
        self.assertDifferent("alice", "bob")
        self.assertDifferent("张三", "李四")
        self.assertDifferent("Дмитрий", "Dmitry")
        self.assertDifferent("alice", "alice2")

    def test_confusableSequences(self) -> None:
        """
        TS #39 maps some characters to sequences: C{m} looks like C{rn},
        the digit 1 like C{l}, and so does Hebrew vav (U+05D5).
        """
        self.assertAlike("mary", "rnary", "RNARY")
        self.assertAlike("bill", "bi11", "bi\u05d5\u05d5")

    def test_prototypeNotFolded(self) -> None:
        """
        A prototype can be a capital: Cherokee Ꭺ (U+13AA) has the
        prototype C{A}.  The skeleton is repeated until stable, so
        C{Ꭺlice} still collides with C{alice}.
        """
        self.assertEqual(tsSkeleton("\u13aa"), "A")
        self.assertAlike("alice", "\u13aalice")

    def test_ignorablesDropped(self) -> None:
        """
        Characters that render as nothing do not change the skeleton (the
        rules refuse them in names anyway).
        """
        self.assertAlike("alice", "al\u200bice", "alice\ufe0f", "a\u00adlice")

    def test_composedOrNot(self) -> None:
        """Precomposed and decomposed accents are one name."""
        self.assertAlike("José", unicodedata.normalize("NFD", "José"))

    def test_idempotentOnExamples(self) -> None:
        """The skeleton of a skeleton is the skeleton."""
        for name in ["alice", "\u0430lice", "\u13aalice", "mary", "Βob",
                     "张三", "\ufdfa"]:
            skeleton = nameSkeleton(name)
            self.assertEqual(nameSkeleton(skeleton), skeleton, name)

    def test_deterministic(self) -> None:
        """The cache is only a cache: the same name, the same key."""
        before = [nameSkeleton(name) for name in ["Alice", "\u13aalice"]]
        nameSkeleton.cache_clear()
        after = [nameSkeleton(name) for name in ["Alice", "\u13aalice"]]
        self.assertEqual(before, after)

    @given(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                   min_size=1, max_size=32))
    def test_asciiCaseIgnored(self, name: str) -> None:
        """For ASCII letters, case never matters."""
        self.assertEqual(nameSkeleton(name.upper()), nameSkeleton(name))
        self.assertEqual(nameSkeleton(name.title()), nameSkeleton(name))

    @given(anyNames)
    @settings(max_examples=500)
    def test_caseFoldIgnored(self, name: str) -> None:
        """
        A name and its case fold have one skeleton, in every script: the
        fold is the first step.
        """
        self.assertEqual(nameSkeleton(name.casefold()), nameSkeleton(name))

    @given(anyNames)
    @settings(max_examples=500)
    def test_idempotent(self, name: str) -> None:
        """
        C{nameSkeleton} is idempotent on names, which plain TS #39 is not
        (U+01C6 ǆ gives C{dž} and then C{dz̆}): it repeats the skeleton
        until it no longer changes.
        """
        skeleton = nameSkeleton(name)
        self.assertEqual(nameSkeleton(skeleton), skeleton)

    def test_plainSkeletonNotIdempotent(self) -> None:
        """
        Why L{nameSkeleton} repeats: one TS #39 pass is not idempotent.
        """
        once = tsSkeleton("\u01c6")
        self.assertNotEqual(tsSkeleton(once), once)


class PrototypeTableTests(SynchronousTestCase):
    """
    The one-way TS #39 mapping recovered from confusable-homoglyphs'
    two-way table.
    """

    def test_synthetic(self) -> None:
        """
        A string partner is a prototype; a character with several partners
        is a prototype; in a pair that only names each other, the one
        listed first is the source; LEFT-TO-RIGHT MARKs are dropped.
        """
        lrm = "\u200e"
        table = {
            "m": [{"c": "rn", "n": ""}],
            "rn": [{"c": "m", "n": ""}],
            "x": [{"c": "a", "n": ""}],
            "a": [{"c": "x", "n": ""}, {"c": "y", "n": ""}],
            "y": [{"c": "a", "n": ""}],
            "p": [{"c": "q", "n": ""}],
            "q": [{"c": "p", "n": ""}],
            lrm + "\u05d5" + lrm: [{"c": "l", "n": ""}],
            "l": [{"c": lrm + "\u05d5" + lrm, "n": ""}, {"c": "1", "n": ""}],
            "1": [{"c": "l", "n": ""}],
        }
        mapping = names._recoverPrototypes(table)
        for source, prototype in [("m", "rn"), ("x", "a"), ("y", "a"),
                                  ("p", "q"), ("\u05d5", "l"), ("1", "l")]:
            self.assertEqual(mapping[source], prototype)
        for prototype in ["rn", "a", "q", "l"]:
            self.assertNotIn(prototype, mapping)

    def test_knownMappings(self) -> None:
        """Lines of confusables.txt, as TS #39 states them."""
        mapping = names._prototypeMap()
        for source, prototype in [
                ("\u0430", "a"), ("\uff41", "a"), ("\U0001d41a", "a"),
                ("m", "rn"), ("1", "l"), ("I", "l"), ("0", "O"),
                ("\u0391", "A"), ("\u05d5", "l"), ("\u3164", "\u1160")]:
            self.assertEqual(mapping[source], prototype, source)
        for prototype in ["a", "l", "O", "rn"]:
            self.assertNotIn(prototype, mapping)

    def test_closed(self) -> None:
        """
        No character of a prototype is itself a source, as in
        confusables.txt; a change in the library's table format would
        break this.
        """
        mapping = names._prototypeMap()
        self.assertGreater(len(mapping), 6000)
        sources = set(mapping)
        for prototype in mapping.values():
            self.assertFalse(sources & set(prototype), prototype)


class IgnorableTests(SynchronousTestCase):
    """
    L{isIgnorable} is Default_Ignorable_Code_Point, and such characters are
    never letters of a user name.
    """

    IGNORABLE = ["\u3164", "\u115f", "\u1160", "\uffa0", "\u00ad", "\u034f",
                 "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060",
                 "\u2064", "\ufe00", "\ufe0f", "\ufeff", "\U000e0001",
                 "\U000e0041", "\U000e0100", "\U000e0fff"]

    def test_ignorable(self) -> None:
        """Fillers, zero-width characters, selectors and tags."""
        for ch in self.IGNORABLE:
            self.assertTrue(isIgnorable(ch), f"U+{ord(ch):04X}")

    def test_notIgnorable(self) -> None:
        """Letters, digits, marks and spaces render as something."""
        for ch in ["a", "Z", "0", "_", "张", "한", "\u1100", "\u0301", " ",
                   "\u3000", "\U0001d41a"]:
            self.assertFalse(isIgnorable(ch), f"U+{ord(ch):04X}")

    def test_fillersAreLettersToUnicode(self) -> None:
        """
        Why the rule needs the property: Python calls the Hangul fillers
        letters.
        """
        for ch in ["\u3164", "\u115f", "\u1160", "\uffa0"]:
            self.assertTrue(ch.isalpha())

    def test_refusedInNames(self) -> None:
        """
        A name made of fillers, or holding any ignorable, is refused with
        L{InvalidValue}.
        """
        for name in ["\u3164\u3164", "\u3164", "a\u3164", "al\u115fice",
                     "alice\uffa0", "a\u200db", "a\ufe0f", "a\u00adb"]:
            self.assertRaises(InvalidValue, rules.checkUserName, name)

    def test_realNamesAllowed(self) -> None:
        """
        Real names of every script still pass, among them Hangul
        syllables and conjoining jamo (which are not fillers).
        """
        for name in ["张三", "李四", "김민준", "\u1100\u1161", "たなか",
                     "Дмитрий", "Ærøskøbing", "محمد", "alice"]:
            self.assertEqual(rules.checkUserName(name), name)
