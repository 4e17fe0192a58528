"""The WebSocket gateway: clients stream audio in and receive their session's results.

See :mod:`pipeline.gateway.protocol` for what clients and the gateway say,
:mod:`pipeline.gateway.audio_input` for how a client's audio becomes the bus's 16 kHz PCM,
:mod:`pipeline.gateway.fanout` for how results reach the right sockets, and
:mod:`pipeline.gateway.app` for the application and :func:`serve`.
"""

from pipeline.gateway.app import Gateway, create_app, serve, server_config
from pipeline.gateway.fanout import ResultFanout, Subscription
from pipeline.gateway.protocol import ErrorCode, GatewaySession, ProtocolError, parse_action, result_event

__all__ = [
    "ErrorCode",
    "Gateway",
    "GatewaySession",
    "ProtocolError",
    "ResultFanout",
    "Subscription",
    "create_app",
    "parse_action",
    "result_event",
    "serve",
    "server_config",
]
