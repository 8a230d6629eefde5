"""Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`), translated natively.

An OpenAI chat request becomes a GenerateContentRequest: the conversation (`contents.py`), the
rest of the request (`request.py`), JSON schemas narrowed to Gemini's subset (`schema.py`),
function names and thought signatures both ways (`calls.py`); the answer comes back as an
OpenAI completion (`response.py`), or its event stream as OpenAI chunks (`stream.py`);
Google's errors become the gateway's (`errors.py`). The module docstrings list every OpenAI
field and what becomes of it, with the Google documentation each rule comes from.
`provider.py` joins them behind the `Provider` interface.
"""

from proxy.providers.gemini.calls import DUMMY_SIGNATURE
from proxy.providers.gemini.provider import GeminiProvider
from proxy.providers.gemini.stream import GeminiStream

__all__ = ["DUMMY_SIGNATURE", "GeminiProvider", "GeminiStream"]
