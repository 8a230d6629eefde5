"""The protocols clients speak: one module each, reading a client's request into the gateway's
own `ChatRequest` (core.py) and writing the answer back in that protocol's shape.

`openai_chat.py` is OpenAI's chat completions, on both API profiles (profiles.py), and
`openai_chat_stream.py` how its streams are written (the relay's `StreamEncoder`);
`body.py` reads a request's JSON body for any of them. Each protocol is a `ClientProtocol`
(exchange.py), which runs the rest of the request the same way whatever the protocol:
admission, routing, providers, settlement. `providers/` is the other side: the protocols
providers speak.
"""
