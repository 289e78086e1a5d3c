"""WebSocket close codes the relay uses. Clients act on the class of the code.

=====  ====================  =========================================================
code   name                  what the client should do
=====  ====================  =========================================================
1009   FRAME_TOO_LARGE       a frame exceeded ``max_frame_size``; fix the sender
1012   RESTARTING            the relay is restarting: reconnect (after the notice's
                             ``retry_after``, with jitter)
4001   AUTH_FAILED           bad signature, malformed card or auth frame: do not retry
                             blindly (a relay with the wrong key is refused locally)
4002   AUTH_TIMEOUT          did not authenticate within ``handshake_timeout``: retry
4003   REVOKED               this machine key was revoked: stop, go back to unpaired
4004   DEVICE_REMOVED        this controller device was removed from its account: stop
4008   TOO_MANY_CONNECTIONS  over ``connections_per_ip``: back off and retry
4009   RATE_LIMITED          this key authenticated too often (``auth_rate_per_key``):
                             back off and retry
4010   FLOOD                 over frames/s, bytes/s or requests/s: back off and retry
4011   SLOW_CONSUMER         the send queue (``send_queue_frames``/``_bytes``) filled up
                             because we did not read, or the relay shed the biggest
                             queues to stay within ``send_buffer_budget``: retry
4013   REPLACED              the same key connected again elsewhere: do not fight it
4014   PROTOCOL_ERROR        a frame that does not parse or is not allowed now
=====  ====================  =========================================================
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    FRAME_TOO_LARGE = 1009
    RESTARTING = 1012
    AUTH_FAILED = 4001
    AUTH_TIMEOUT = 4002
    REVOKED = 4003
    DEVICE_REMOVED = 4004
    TOO_MANY_CONNECTIONS = 4008
    RATE_LIMITED = 4009
    FLOOD = 4010
    SLOW_CONSUMER = 4011
    REPLACED = 4013
    PROTOCOL_ERROR = 4014

    @property
    def retryable(self) -> bool:
        return self not in (
            CloseCode.AUTH_FAILED,
            CloseCode.REVOKED,
            CloseCode.DEVICE_REMOVED,
            CloseCode.REPLACED,
        )
