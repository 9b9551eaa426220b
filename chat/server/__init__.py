"""
The node's rules, and the connections they serve: one protocol per
client connection (L{protocol}), the registry of sessions (L{sessions}),
routing (L{routing}), the user directory (L{users}) and the request
handlers by domain (L{accounts}, L{messaging}, L{social}) behind one
dispatcher (L{service}).  Nothing here runs SQL or speaks to Redis
directly: it goes through L{chat.storage} and L{chat.cluster}.
"""
