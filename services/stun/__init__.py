"""STUN: our RFC 8489 Binding server with RFC 5780 behaviour discovery, and natcheck.

- ``message``   sans-I/O codec (RFC 8489 / RFC 5780 attributes, RFC 5769 vectors)
- ``responder`` sans-I/O Binding server logic (rate limit, CHANGE-REQUEST routing)
- ``server``    asyncio UDP/TCP adapter: ``run_stun_server``
- ``discovery`` sans-I/O RFC 5780 test plan and NAT classification
- ``natcheck``  asyncio driver: ``natcheck``, ``python -m services.stun.natcheck``
- ``errors``    ``StunError`` and its subclasses
"""
