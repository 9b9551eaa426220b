"""
A clustered chat server on Twisted.

Two wire dialects share one port (see docs/PROTOCOL-NOTES.md and the
project's PROTOCOL.md): a text dialect for people at telnet, and a JSON
dialect compatible with the classic C++ cluster chat server.  Nothing in
this package knows about twistd; L{chat.tap} builds the service tree.
"""
