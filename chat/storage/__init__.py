"""
The database: connections, dialects and retries (L{pool}), the schema and
its migrations (L{schema}, reading the top-level C{schema/} directory as
package data) and every query (L{store}).  Nothing here decides anything
the chat's rules are about.
"""
