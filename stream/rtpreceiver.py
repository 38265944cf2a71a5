"""Tuning of aiortc's RTCRtpReceiver for analysis: frames sooner, less RTCP work.

**Jitter buffer.** A video jitter buffer that releases a frame at its last packet, not one
frame later.

aiortc's `JitterBuffer` hands a video frame to the decoder when the first
packet of the *next* frame arrives: every frame waits one frame interval
(33-42 ms at 24-30 fps) before decoding. The sender marks the last packet of
each frame with the RTP marker bit (RFC 3550; RFC 6184 for H.264, RFC 7741 for
VP8), so a frame whose packets are all present up to its marked packet is
complete and can go at once. Anything less certain (a packet missing, packets
of an older frame still waiting) falls back to aiortc's own rule, so loss and
reordering are handled exactly as before.

**REMB.** aiortc's receive-side bandwidth estimator sends a REMB feedback packet on
every incoming packet while it sees "overuse". A busy event loop delays packets, which
looks like overuse, so each packet costs an RTCP packet (SRTP-protected, sent), which
makes the loop busier: with four sessions on two cores this was 13 % of the event
loop. `ThrottledEstimator` passes the estimator's REMBs on at most every 0.5 s (WebRTC
senders expect REMB about once a second).
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

__all__ = ["MarkerJitterBuffer", "ThrottledEstimator", "tune_receivers"]

log = logging.getLogger(__name__)

# aiortc 1.x private attributes of RTCRtpReceiver
_JITTER = "_RTCRtpReceiver__jitter_buffer"
_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
REMB_INTERVAL_MS = 500


class MarkerJitterBuffer(JitterBuffer):
    """`JitterBuffer` that also completes a frame on its marker packet."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Store ``packet``; returns (send a PLI, a complete frame or None)."""
        pli, frame = super().add(packet)
        if frame is None and packet.marker and self._origin is not None:
            frame = self._complete(packet)
        return pli, frame

    def _complete(self, last: RtpPacket) -> JitterFrame | None:
        count = uint16_add(last.sequence_number, -self._origin) + 1
        if count > self.capacity:
            return None
        parts = []
        for i in range(count):
            packet = self._packets[uint16_add(self._origin, i) % self.capacity]
            if packet is None or packet.timestamp != last.timestamp:
                return None  # a gap, or an older frame first: aiortc's rule decides
            parts.append(packet._data)
        self.remove(count)
        return JitterFrame(data=b"".join(parts), timestamp=last.timestamp)


class ThrottledEstimator(RemoteBitrateEstimator):
    """`RemoteBitrateEstimator` whose REMB feedback goes out at most every 0.5 s."""

    def __init__(self) -> None:
        super().__init__()
        self._last_remb_ms: int | None = None

    def add(self, arrival_time_ms: int, **kwargs: Any) -> tuple[int, list[int]] | None:
        """Feed one packet; returns (bitrate, ssrcs) when a REMB should be sent."""
        remb = super().add(arrival_time_ms=arrival_time_ms, **kwargs)
        if remb is None:
            return None
        last = self._last_remb_ms
        if last is not None and arrival_time_ms - last < REMB_INTERVAL_MS:
            return None
        self._last_remb_ms = arrival_time_ms
        return remb


def tune_receivers(pc: Any) -> int:
    """Give the video receivers of ``pc`` a `MarkerJitterBuffer` and a `ThrottledEstimator`
    (call before media flows). Returns how many receivers were changed; 0 (and a warning)
    if this aiortc keeps them elsewhere, in which case aiortc's own behaviour stays."""
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "video" or receiver is None:
            continue
        if not isinstance(getattr(receiver, _JITTER, None), JitterBuffer) or not isinstance(
            getattr(receiver, _ESTIMATOR, None), RemoteBitrateEstimator
        ):
            log.warning("aiortc's receiver has changed: keeping its jitter buffer and REMB")
            continue
        setattr(receiver, _JITTER, MarkerJitterBuffer(capacity=512, is_video=True))
        setattr(receiver, _ESTIMATOR, ThrottledEstimator())
        changed += 1
    return changed
