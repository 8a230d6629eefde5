"""The routing table: a public model name -> its deployments, each a provider and a model."""

from __future__ import annotations

from proxy.config import Config, Deployment
from proxy.providers import build_provider
from proxy.providers.base import Provider

Route = tuple[tuple[Deployment, Provider], ...]


class Router:
    def __init__(self, config: Config):
        self.providers = {name: build_provider(pc) for name, pc in config.providers.items()}
        self.routes: dict[str, Route] = {
            public: tuple((dep, self.providers[dep.provider]) for dep in deployments)
            for public, deployments in config.models.items()
        }

    def route(self, public_model: str) -> Route:
        """The deployments of a (validated) public model, in the order to try them."""
        return self.routes[public_model]

    def owner(self, public_model: str) -> str:
        """The provider that serves a model first, for the model list's `owned_by`."""
        return self.routes[public_model][0][0].provider
