"""
Tests for L{chat.core.rules}: what names, passwords, descriptions and texts may
hold (PROTOCOL.md 3.3).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chat.core import rules
from chat.core.errors import BadRequest, InvalidValue


class UserNameTests(SynchronousTestCase):
    """
    L{rules.checkUserName}: 1 to 32 letters (any script), ASCII digits,
    C{_ . -}, starting with a letter.
    """

    def assertValid(self, name: str) -> None:
        self.assertEqual(rules.checkUserName(name), name)

    def assertInvalid(self, name: str) -> None:
        self.assertRaises(InvalidValue, rules.checkUserName, name)

    def test_plain(self) -> None:
        """Ordinary ASCII names, with digits and the three marks, pass."""
        for name in ["alice", "a", "Bob_2", "j.doe-1", "x" * 32]:
            self.assertValid(name)

    def test_unicodeLetters(self) -> None:
        """Any Unicode letter counts as a letter: 张三 is a name."""
        for name in ["张三", "Ærøskøbing", "Дмитрий", "José.Ñ"]:
            self.assertValid(name)

    def test_startsWithLetter(self) -> None:
        """
        A name starting with a digit or a mark is refused, so that a name
        never looks like an id in the text dialect.
        """
        for name in ["1alice", "22", "_x", ".x", "-x"]:
            self.assertInvalid(name)

    def test_length(self) -> None:
        """Empty and 33-character names are refused; 32 is the longest."""
        self.assertInvalid("")
        self.assertInvalid("a" * 33)
        self.assertValid("a" * 32)

    def test_lengthCountsCharactersNotBytes(self) -> None:
        """
        The limit is in characters: 32 three-byte characters still pass.
        """
        self.assertValid("张" * 32)
        self.assertInvalid("张" * 33)

    def test_onlyAsciiDigits(self) -> None:
        """Digits of other scripts and superscripts are not allowed."""
        for name in ["a٣", "a²", "a١٢"]:
            self.assertInvalid(name)

    def test_forbiddenCharacters(self) -> None:
        """
        Spaces, tabs, control characters, colons and other punctuation are
        refused: a name is one word of a text-dialect event.
        """
        for name in ["a b", "a\tb", "a\nb", "a\x00b", "a\x1bb", "a:b",
                     "a!", "a@b", "a\u2028b", "a\u200bb"]:
            self.assertInvalid(name)

    def test_caseKept(self) -> None:
        """Names are returned exactly as sent, case included."""
        self.assertEqual(rules.checkUserName("AlIcE"), "AlIcE")


class PasswordTests(SynchronousTestCase):
    """
    L{rules.checkPassword}: 1 to 128 characters, no whitespace, no control
    character.
    """

    def test_valid(self) -> None:
        """Punctuation, colons and non-ASCII characters are fine."""
        for password in ["p", "pa:ss!", "密码", "x" * 128]:
            self.assertEqual(rules.checkPassword(password), password)

    def test_length(self) -> None:
        """Empty and 129-character passwords are refused."""
        self.assertRaises(InvalidValue, rules.checkPassword, "")
        self.assertRaises(InvalidValue, rules.checkPassword, "x" * 129)

    def test_noWhitespace(self) -> None:
        """
        No whitespace of any kind, a tab included: the text dialect splits
        arguments at spaces and tabs.
        """
        for password in ["a b", "a\tb", " ab", "ab\u3000", "a\u00a0b"]:
            self.assertRaises(InvalidValue, rules.checkPassword, password)

    def test_noControl(self) -> None:
        """No control character (category Cc)."""
        for password in ["a\x00", "a\x1b", "a\x7f", "a\x85"]:
            self.assertRaises(InvalidValue, rules.checkPassword, password)


class GroupNameTests(SynchronousTestCase):
    """
    L{rules.checkGroupName}: 1 to 50 printable characters, no whitespace,
    no C{:}.
    """

    def test_valid(self) -> None:
        """Printable words, including digits only and non-ASCII, pass."""
        for name in ["dev", "123", "组-1", "a!b", "x" * 50]:
            self.assertEqual(rules.checkGroupName(name), name)

    def test_length(self) -> None:
        """Empty and 51-character group names are refused."""
        self.assertRaises(InvalidValue, rules.checkGroupName, "")
        self.assertRaises(InvalidValue, rules.checkGroupName, "x" * 51)

    def test_noWhitespaceNoColon(self) -> None:
        """
        A group name is one word (text dialect) and holds no C{:} (the
        colon form splits at it, and a group line is C{<id> <name>: ...}).
        """
        for name in ["a b", "a\tb", "a:b", ":", "a\u3000b"]:
            self.assertRaises(InvalidValue, rules.checkGroupName, name)

    def test_noControl(self) -> None:
        """No control characters."""
        for name in ["a\x00", "a\nb", "a\x1b"]:
            self.assertRaises(InvalidValue, rules.checkGroupName, name)


class DescriptionTests(SynchronousTestCase):
    """
    L{rules.checkDescription}: at most 200 characters, may be empty, a tab
    allowed but no other control character.
    """

    def test_valid(self) -> None:
        """Empty, spaced, tabbed, colon-holding and 200-long pass."""
        for description in ["", "a group: for all", "a\tb", "x" * 200]:
            self.assertEqual(rules.checkDescription(description), description)

    def test_tooLong(self) -> None:
        """201 characters are too many."""
        self.assertRaises(InvalidValue, rules.checkDescription, "x" * 201)

    def test_noControl(self) -> None:
        """Line breaks, NUL and escape would break a text-dialect line."""
        for description in ["a\nb", "a\rb", "a\x00", "a\x1b[31m"]:
            self.assertRaises(
                InvalidValue, rules.checkDescription, description)


class TextTests(SynchronousTestCase):
    """
    L{rules.checkText}: 1 to 4000 characters, a tab allowed but no other
    control character, so that every event stays one line.
    """

    def test_valid(self) -> None:
        """Spaces, tabs, colons, emoji and 4000 characters pass."""
        for text in ["hi", "hello:  there", "a\tb", "😀 ok", "x" * 4000]:
            self.assertEqual(rules.checkText(text), text)

    def test_length(self) -> None:
        """Empty and 4001-character texts are refused."""
        self.assertRaises(InvalidValue, rules.checkText, "")
        self.assertRaises(InvalidValue, rules.checkText, "x" * 4001)

    def test_noControl(self) -> None:
        """
        Newline, carriage return, NUL, escape, DEL and the C1 controls are
        all category Cc and refused.
        """
        for text in ["a\nb", "a\rb", "a\x00b", "\x1b[2J", "a\x7f", "a\x85",
                     "a\x0bb", "a\x0cb"]:
            self.assertRaises(InvalidValue, rules.checkText, text)

    def test_invalidValueIsBadRequest(self) -> None:
        """
        L{InvalidValue} is a L{BadRequest} with errno 100, so every codec
        that catches L{BadRequest} also catches rule violations.
        """
        exc = self.assertRaises(InvalidValue, rules.checkText, "")
        self.assertIsInstance(exc, BadRequest)
        self.assertEqual(exc.errno, 100)
        self.assertTrue(exc.message)


class IdTests(SynchronousTestCase):
    """
    L{rules.isIdShaped} and L{rules.parseId}: how a text-dialect argument
    names an id.
    """

    def test_isIdShaped(self) -> None:
        """Only non-empty strings of ASCII digits are ids."""
        self.assertTrue(rules.isIdShaped("7"))
        self.assertTrue(rules.isIdShaped("007"))
        for ref in ["", "a1", "1a", "-1", "+1", " 1", "١", "²", "1.0"]:
            self.assertFalse(rules.isIdShaped(ref), ref)

    def test_parseId(self) -> None:
        """Ordinary ids parse as decimal, leading zeros ignored."""
        self.assertEqual(rules.parseId("42"), 42)
        self.assertEqual(rules.parseId("007"), 7)
        self.assertEqual(rules.parseId(str(rules.MAX_ID)), rules.MAX_ID)

    def test_parseIdTooLarge(self) -> None:
        """
        Any id larger than a BIGINT comes back as C{MAX_ID + 1}, which the
        service reports as not found: also one of 19 or 20 digits, which
        is not cut off by length alone.
        """
        for digits in [str(rules.MAX_ID + 1), str(2**64),
                       "9" * 20, "9" * 21, "1" * 5000]:
            self.assertEqual(rules.parseId(digits), rules.MAX_ID + 1, digits)
