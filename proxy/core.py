"""The gateway's own request and usage types, between the two protocol layers.

Client protocols (`protocols/`: OpenAI chat completions, Anthropic Messages, OpenAI Responses)
read a client's request into a `ChatRequest`; providers (`providers/`) translate a
`ChatRequest` into their upstream's request (or send it as it came, `Native`, when their
upstream speaks the client's protocol) and read their upstream's answer back, reporting its
`Usage`. Accounting
holds and charges tokens by these two types alone, whichever protocol a request came in by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.config import Deployment


@dataclass(frozen=True, slots=True)
class Native:
    """A request in the client's own protocol, for a provider whose upstream speaks it too
    (`Provider.speaking`): it goes there as the client sent it, nothing lost in translation.

    `dialect` names the protocol ("anthropic-messages", "openai-responses"); `body` is the
    client's JSON body, never changed (another deployment may need it); `headers` are the
    client's headers that the upstream reads (`anthropic-beta`, ...).
    """

    dialect: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # Why the request cannot be translated for a provider that does not speak `dialect`
    # (a built-in tool of the client's protocol, say): (message, param) of a 400 that
    # `Provider.speaking` raises there; None when it translates.
    untranslatable: tuple[str, str] | None = None


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completions request, as the client sent it plus the gateway's defaults
    (or a request of another client protocol translated into one, `native` holding it).

    What it may cost is bounded before it is sent: `prompt_tokens_estimate` +
    `choices` x (`cap` + `completion_extra`) tokens are held on the quota, and every
    provider sends the upstream `cap_for(deployment)` as its output cap, under its own name.
    """

    body: dict[str, Any]  # the OpenAI-shaped body; `model` still the public name
    public_model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (stream_options.include_usage)
    max_tokens: int | None  # the client's cap: max_completion_tokens or max_tokens (the smaller)
    prompt_tokens_estimate: int
    choices: int = 1  # n: every choice is billed its own output
    # The output cap of each choice: the client's, or the largest default of the model's
    # deployments; lowered at admission when only that much of the month's quota remains.
    cap: int = 4096
    completion_extra: int = 0  # output billed beyond the cap (OpenAI's Predicted Outputs)
    long_tool_ids: bool = False  # a tool call id is longer than OpenAI's 40 characters
    # The client's request in its own protocol, when it came by one other than chat
    # completions (`body` is then its translation, for providers that do not speak it).
    native: Native | None = None

    @property
    def base_tokens(self) -> int:
        """What the request may cost whatever the cap: the prompt, and output past the cap."""
        return self.prompt_tokens_estimate + self.choices * self.completion_extra

    def cap_for(self, deployment: Deployment) -> int:
        """The output cap to send this deployment: the admitted cap, or less when the client
        set none and the deployment's own default is smaller."""
        if self.max_tokens is None:
            return min(self.cap, deployment.default_max_tokens)
        return self.cap


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # True when the upstream reported nothing and we counted

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
