"""Anthropic's Messages API (`POST {base}/v1/messages`), translated natively.

An OpenAI chat request becomes a Messages API request: the conversation (`messages.py`) and
the rest of the request (`request.py`); the answer comes back as an OpenAI completion
(`response.py`), or its event stream as OpenAI chunks (`stream.py`); Anthropic's errors become
the gateway's (`errors.py`). The module docstrings list every OpenAI field and what becomes of
it, with the Anthropic documentation each rule comes from. `provider.py` joins them behind the
`Provider` interface.
"""

from proxy.providers.anthropic.provider import API_VERSION, AnthropicProvider
from proxy.providers.anthropic.stream import AnthropicStream

__all__ = ["API_VERSION", "AnthropicProvider", "AnthropicStream"]
