"""
What makes many nodes one cluster: the message bus (L{bus}: one process,
L{localbus}; many, L{redisbus} over L{redisclient} and L{resp}), the
identity of messages across nodes (L{dedup}) and this node's lease
(L{presence}).  Nothing here decides where a message goes or whether a
request is allowed: that is L{chat.server}'s.
"""
