"""
Operating a node: what it counts (L{counters}), how Prometheus reads it
(L{metrics}), its HTTP endpoints (L{web}), draining it (L{drain}), the
orders an operator leaves in the database (L{orders}) and the admin
command (L{chatctl}).
"""
