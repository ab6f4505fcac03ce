"""dns_blocker: the egress-filter DNS resolver (dnslib + asyncio, uvloop when available).

    wire       bytes ↔ question, answer scan, splice (the hot path's only parser)
    responses  block and canary answers, built once with dnslib
    cache      TTL-honouring bounded answer cache (RFC 2308 negative answers too)
    upstream   forwarding: UDP, TCP on truncation, failover, timeouts
    resolver   the chain: ACL → question → CH identity → policy → cache → coalescing → upstream
    chain/     the links with a module of their own: acl, identity, verdict, coalesce
    server     UDP/TCP transports, signals, drain
    config     defaults < policy settings.dns < --config file < CLI flags
    cli        ``egress-filter dns``
"""
