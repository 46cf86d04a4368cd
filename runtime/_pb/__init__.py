"""Protobuf/gRPC modules generated from protos/ at build time (never hand-edited, not committed).

They register into this private descriptor pool instead of protobuf's default one, so the
runtime can share a process with other users of the same public `inference.*` schema
(tritonclient's own generated modules, for one) without duplicate-symbol errors.
"""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
