"""Sans-IO wire protocol: messages, the strict codec, user-data serialization."""

from .codec import DEFAULT_LIMITS, Limits, ProtocolError, decode, encode
from .messages import MESSAGES, PROTOCOL_VERSION, Message
from .serialize import SerializationError, Serialized, dumps, loads

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "MESSAGES",
    "Message",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "SerializationError",
    "Serialized",
    "decode",
    "dumps",
    "encode",
    "loads",
]
