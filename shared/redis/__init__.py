"""Redis, the fast path: the only package that imports redis-py or sends a Redis command.

client      clients, probes, and the Redis failures callers catch (REDIS_DOWN, REDIS_ERRORS)
keys        every key, stream, channel and group name
scripts/    every Lua script, one .lua file each, read once
codec       replies become values (`Event`, `QueueEntry`, text)
pipeline    script calls sent as one lean EVALSHA pipeline
runs        run-level operations for API and workers (`RedisIO`): queue entries, fenced
            appends, events, cancels, diagnostics, counters
group       the workers' side of the queue: reads, re-claims, dead letters, heartbeats,
            the cancel channel, the reconciler's reads
admission   the kill switch, the key epoch, rate buckets and SSE slots (API)
hub         the API's pub/sub connection (a sharded channel per watched run), its stream reads
cache       the thread history cache
breakers    the model circuit breakers' shared state
ops         the operators' snapshot reads and dead-letter commands
"""
