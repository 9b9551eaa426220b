"""
Tests for L{chat.core.messages}: the values shared by dialects, service and bus.
"""

from twisted.trial.unittest import SynchronousTestCase

from chat.core.messages import ChatEvent, Login, Register


class PasswordReprTests(SynchronousTestCase):
    """
    Requests are logged by their repr when something goes wrong, so a
    password must never appear in it.
    """

    def test_loginHidesPassword(self) -> None:
        self.assertNotIn("s3cret", repr(Login("alice", "s3cret")))
        self.assertNotIn("s3cret", str(Login(1, "s3cret")))

    def test_registerHidesPassword(self) -> None:
        self.assertNotIn("s3cret", repr(Register("alice", "s3cret")))


class ChatEventTests(SynchronousTestCase):
    """
    An event is encoded once, whatever the number of recipients.
    """

    def test_encodedOnce(self) -> None:
        """
        toJSON and toTextLine return the very same bytes object each time.
        """
        event = ChatEvent(1, "alice", "hi", "2024-01-01 12:00:00", toId=2)
        self.assertIs(event.toJSON(), event.toJSON())
        self.assertIs(event.toTextLine(), event.toTextLine())

    def test_fromJSONKeepsBytes(self) -> None:
        """
        An event rebuilt from the bus or the store reuses those bytes
        rather than encoding again.
        """
        data = ChatEvent(1, "alice", "hi", "2024-01-01 12:00:00",
                         groupId=3).toJSON()
        self.assertIs(ChatEvent.fromJSON(data).toJSON(), data)
