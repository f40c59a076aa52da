"""The applications that come with keyexchanged: message, echo, forward."""

from keyexchanged.applications import (
    Application,
    EchoFactory,
    MessageFactory,
    check_forward_target,
    make_forward_factory,
)
from keyexchanged.config import Setting

message = Application(
    "message",
    "send the configured secret message, then END (the original program)",
    lambda settings, reactor: MessageFactory(settings["message"]),
)

echo = Application(
    "echo",
    "send every session's data back to it",
    lambda settings, reactor: EchoFactory(),
)

forward = Application(
    "forward",
    "relay each session to --forward-to ENDPOINT (the server half of a tunnel)",
    make_forward_factory,
    settings=[
        Setting(
            "forward-to",
            None,
            check_forward_target,
            "forward: where each session goes (a client endpoint, e.g. tcp:127.0.0.1:6379)",
        )
    ],
)
