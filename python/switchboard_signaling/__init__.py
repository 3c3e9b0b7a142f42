"""asyncio client pieces for the switchboard signaling protocol v1.

``signal_pb2`` is generated from ``proto/switchboard/v1/signal.proto`` when
the package is built; ``frame`` is the 12-byte header of docs/PROTOCOL.md
section 2; ``envelope`` converts frames to and from the JSON envelope of the
text mode (section 12) that the conformance vectors are written in.
"""
