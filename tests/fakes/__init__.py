"""Fake upstreams speaking each provider's real wire format, on loopback.

    openai_upstream.py    the fake OpenAI-compatible upstream: scenarios by model name,
                          behaviours by options (Record)
    openai_wire.py        OpenAI's wire format, as every behaviour of that fake writes it
    fast.py               its benchmark answers: encoded once, paced and endless streams
    faults.py             its random faults (the chaos run, tests/test_chaos.py)
    billing.py            what a request costs at a provider that bills as the real ones
    billing_upstream.py   the billing scenarios in OpenAI's, Anthropic's and Gemini's formats
    anthropic_upstream.py, gemini_upstream.py   Anthropic's Messages API, Gemini's API
    __main__.py           `python -m tests.fakes --port P`: the fake on a port

The tests, the benchmarks, the chaos run and the deploy check share them. They live with the
tests, and the benchmarks import them from here (benchmarks/harness.py puts the repository's
root on sys.path, as it did for tests/redis_binary.py, the one Redis launcher): they are test
doubles, not part of the package pip installs (proxy), and most of their users are tests.
"""
