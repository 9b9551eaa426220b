"""
Tests for L{chat.wire.framing.MessageSplitter}: where a client message ends
(LF or NUL, a CR before either dropped) and when it is too long
(PROTOCOL.md 1).
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from chat.wire.framing import MessageSplitter, MessageTooLong


def split(splitter: MessageSplitter, *chunks: bytes) -> list[tuple[bytes, bool]]:
    """Feed each chunk in turn; every message that came out, in order."""
    out: list[tuple[bytes, bool]] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


class TerminatorTests(SynchronousTestCase):
    """Each terminator the protocol allows, and what is left of the line."""

    def test_lf(self) -> None:
        """LF ends a message; it is not part of it and not a NUL end."""
        self.assertEqual(split(MessageSplitter(100), b"ping\n"),
                         [(b"ping", False)])

    def test_crlf(self) -> None:
        """telnet's CRLF: the CR before the LF is dropped."""
        self.assertEqual(split(MessageSplitter(100), b"ping\r\n"),
                         [(b"ping", False)])

    def test_nul(self) -> None:
        """The classic client's NUL ends a message and is reported."""
        self.assertEqual(split(MessageSplitter(100), b'{"msgid":12}\0'),
                         [(b'{"msgid":12}', True)])

    def test_crnul(self) -> None:
        """A CR before a NUL is dropped too."""
        self.assertEqual(split(MessageSplitter(100), b"ping\r\0"),
                         [(b"ping", True)])

    def test_onlyOneCRDropped(self) -> None:
        """
        Only the one CR just before the terminator belongs to it; another
        one before it, or one inside the line, is content.
        """
        self.assertEqual(split(MessageSplitter(100), b"a\r\r\nb\rc\n"),
                         [(b"a\r", False), (b"b\rc", False)])

    def test_blankMessagesYielded(self) -> None:
        """
        The splitter yields empty and whitespace-only messages as they are;
        ignoring them is the protocol's job, which must see them to keep
        its count of terminators honest.
        """
        self.assertEqual(
            split(MessageSplitter(100), b"\n\r\n\0 \t\n"),
            [(b"", False), (b"", False), (b"", True), (b" \t", False)])

    def test_mixedTerminators(self) -> None:
        """Each message reports its own terminator."""
        self.assertEqual(
            split(MessageSplitter(100), b"a\nb\0c\r\nd\r\0"),
            [(b"a", False), (b"b", True), (b"c", False), (b"d", True)])

    def test_noTerminatorNoMessage(self) -> None:
        """Bytes without a terminator are kept, not yielded."""
        splitter = MessageSplitter(100)
        self.assertEqual(split(splitter, b"pi", b"ng"), [])
        self.assertEqual(split(splitter, b"\n"), [(b"ping", False)])

    def test_emptyFeed(self) -> None:
        """Feeding nothing yields nothing and loses nothing."""
        splitter = MessageSplitter(100)
        self.assertEqual(split(splitter, b"ab", b"", b"c\n"),
                         [(b"abc", False)])


class ChunkingTests(SynchronousTestCase):
    """Messages come out the same however the bytes were cut."""

    def test_manyInOneFeed(self) -> None:
        """Several messages in one read all come out, in order."""
        self.assertEqual(split(MessageSplitter(100), b"one\ntwo\0three\r\n"),
                         [(b"one", False), (b"two", True), (b"three", False)])

    def test_byteByByte(self) -> None:
        """
        A stream fed one byte at a time gives the same messages as fed at
        once, including a CR and its LF arriving in different reads.
        """
        stream = b"one\r\ntwo\0thr\xc3\xa9e\r\0four\n"
        whole = split(MessageSplitter(100), stream)
        splitter = MessageSplitter(100)
        pieces = split(splitter, *[stream[i:i + 1] for i in range(len(stream))])
        self.assertEqual(pieces, whole)
        self.assertEqual(len(pieces), 4)

    def test_messageAcrossFeeds(self) -> None:
        """The end of one read and the start of the next make one message."""
        self.assertEqual(
            split(MessageSplitter(100), b"hel", b"lo\nwor", b"ld\0"),
            [(b"hello", False), (b"world", True)])

    def test_utf8SplitInsideCharacter(self) -> None:
        """
        The splitter works on bytes: a multi-byte character cut between
        two reads is whole again in the message.
        """
        data = "张三 😀\n".encode("utf-8")
        self.assertEqual(
            split(MessageSplitter(100), data[:2], data[2:5], data[5:]),
            [("张三 😀".encode("utf-8"), False)])

    def test_manyTinyFeedsAreCheap(self) -> None:
        """
        A client that sends a long message one byte per read must not
        cost time quadratic in its length: the reactor thread would stall
        every other connection for seconds (64 KiB once took 11 s).
        """
        size = 1 << 17
        splitter = MessageSplitter(size)
        deadline = time.monotonic() + 5
        for i in range(size):
            for _ in splitter.feed(b"x"):
                self.fail("no message was complete")
            if i % 4096 == 0 and time.monotonic() > deadline:
                self.fail(f"only {i} one-byte reads in 5 s")
        self.assertEqual(list(splitter.feed(b"\n")), [(b"x" * size, False)])


class LimitTests(SynchronousTestCase):
    """
    --max-line counts the bytes before the terminator, a CR just before it
    not included; a message is overlong as soon as more arrive without a
    terminator.
    """

    def test_exactlyMaxLength(self) -> None:
        """A message of exactly the limit passes, with any terminator."""
        for end in (b"\n", b"\r\n", b"\0", b"\r\0"):
            self.assertEqual(split(MessageSplitter(8), b"x" * 8 + end),
                             [(b"x" * 8, end.endswith(b"\0"))])

    def test_oneOverWithTerminator(self) -> None:
        """One byte more than the limit, even with its terminator there."""
        for end in (b"\n", b"\r\n", b"\0"):
            splitter = MessageSplitter(8)
            self.assertRaises(MessageTooLong, split, splitter, b"x" * 9 + end)

    def test_oneOverWithoutTerminator(self) -> None:
        """More than the limit without a terminator is overlong at once."""
        self.assertRaises(MessageTooLong, split, MessageSplitter(8),
                          b"x" * 9)

    def test_oneOverAcrossFeeds(self) -> None:
        """The limit applies to the buffered total, not to one read."""
        splitter = MessageSplitter(8)
        self.assertEqual(split(splitter, b"x" * 5), [])
        self.assertRaises(MessageTooLong, split, splitter, b"x" * 4)

    def test_pendingCRAtLimit(self) -> None:
        """
        Limit bytes then a CR, with the LF still to come, is not overlong
        yet: the CR may be part of the terminator.
        """
        splitter = MessageSplitter(8)
        self.assertEqual(split(splitter, b"x" * 8 + b"\r"), [])
        self.assertEqual(split(splitter, b"\n"), [(b"x" * 8, False)])

    def test_pendingCRAtLimitThenMore(self) -> None:
        """...but if the CR turns out to be content, the message is overlong."""
        splitter = MessageSplitter(8)
        self.assertEqual(split(splitter, b"x" * 8 + b"\r"), [])
        self.assertRaises(MessageTooLong, split, splitter, b"y")

    def test_twoCRsAtLimit(self) -> None:
        """Only one CR is the terminator's: limit bytes, CR, CR is too long."""
        self.assertRaises(MessageTooLong, split, MessageSplitter(8),
                          b"x" * 8 + b"\r\r\n")

    def test_earlierMessagesFirst(self) -> None:
        """
        The messages before an overlong one come out before the error, so
        that they are answered before the connection closes.
        """
        splitter = MessageSplitter(8)
        got: list[tuple[bytes, bool]] = []
        with self.assertRaises(MessageTooLong):
            for message in splitter.feed(b"one\ntwo\0" + b"x" * 20 + b"\n"):
                got.append(message)
        self.assertEqual(got, [(b"one", False), (b"two", True)])

    def test_head(self) -> None:
        """
        The error carries the start of the message, enough to tell its
        dialect, not the whole of it.
        """
        splitter = MessageSplitter(100)
        with self.assertRaises(MessageTooLong) as caught:
            split(splitter, b'{"msgid":6,' + b"x" * 200)
        self.assertTrue(caught.exception.head.startswith(b'{"msgid":6,'))
        self.assertLessEqual(len(caught.exception.head), 64)

    def test_headSkipsLeadingBlanks(self) -> None:
        """
        An overlong message's dialect is chosen by its first non-space
        byte (PROTOCOL.md 1), so many leading spaces must not push that
        byte out of the head.
        """
        splitter = MessageSplitter(100)
        with self.assertRaises(MessageTooLong) as caught:
            split(splitter, b" \t" * 60 + b'{"msgid":12' + b"x" * 100 + b"\n")
        self.assertTrue(caught.exception.head.lstrip(b" \t").startswith(b"{"))

    def test_bufferResetAfterOverlong(self) -> None:
        """
        After an overlong message the splitter starts afresh: nothing of
        the overlong bytes leaks into the next message.
        """
        splitter = MessageSplitter(8)
        self.assertRaises(MessageTooLong, split, splitter, b"x" * 20)
        self.assertEqual(split(splitter, b"ok\n"), [(b"ok", False)])

    def test_emptyFeedAtPendingCR(self) -> None:
        """
        An empty read while limit bytes and a CR wait for their LF changes
        nothing: the message is still within the limit.
        """
        splitter = MessageSplitter(8)
        self.assertEqual(split(splitter, b"x" * 8 + b"\r", b""), [])
        self.assertEqual(split(splitter, b"\n"), [(b"x" * 8, False)])
