"""The router: which tier answers a request, and when to escalate.

Pure decisions over cheap features, a small classifier and token logprobs. The service calls
it; nothing here touches the engine, the pool or HTTP, so every decision has a table test.
"""
