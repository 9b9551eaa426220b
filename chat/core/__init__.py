"""
The chat's vocabulary: requests, replies and events (L{messages}), the
errors a request can fail with (L{errors}) and what names and texts may
contain (L{rules}).  Pure values and checks: nothing here does I/O or
knows a dialect.
"""
