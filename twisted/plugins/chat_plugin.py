"""
The C{twistd chat} plugin: only the IServiceMaker; everything else is in
L{chat.tap}.
"""

from twisted.application.service import ServiceMaker

chat = ServiceMaker(
    "chat",
    "chat.tap",
    "A clustered chat server (text and classic JSON dialects)",
    "chat",
)
