"""Pure values and rules of the chat: no I/O, no Twisted reactor."""
