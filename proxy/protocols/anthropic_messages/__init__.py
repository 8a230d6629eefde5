"""Anthropic's Messages API as a client protocol: `POST /messages` and
`POST /messages/count_tokens` (protocol.py has the whole story; request.py the checks,
translate.py the translation for non-Claude deployments, answer.py and stream.py the answers,
count.py token counting)."""

from proxy.protocols.anthropic_messages.protocol import MESSAGES, Messages

__all__ = ["MESSAGES", "Messages"]
