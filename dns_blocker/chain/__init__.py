"""The resolver's links, one job per module; ``Resolver.handle`` runs them in
the order written there (and in docs/dns.md; step 0 in ``ReadyAnswers.answer``):

    ready     step 0 (UDP): a repeated question answered from ready bytes
    acl       which clients may ask (REFUSED otherwise)
    identity  CH-class questions about the server itself, answered here
    verdict   the policy's decision for the client's group, memoised per view,
              and the strictest verdict on a CNAME chain
    cache     an upstream answer still alive, TTLs counted down, CNAMEs re-judged
    coalesce  one upstream question per distinct question, bounded in number
    forward   the question to its upstreams (a forward domain's, or the public
              ones); the answer into the cache
    telemetry what each answer counts in the metrics and writes to the event log

Each link is sans-IO: it takes parsed values and returns a value (the
forwarding link awaits the injected upstreams; telemetry calls the injected
metrics and event sink); the resolver sends what they return.
"""
