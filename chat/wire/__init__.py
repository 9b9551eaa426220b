"""
Bytes to and from the values of L{chat.core}: splitting a stream into
client messages (L{framing}) and the two dialects that read and write
them (L{dialect}, L{jsondialect}, L{textdialect}).  Pure: no I/O, no
connection state.
"""
