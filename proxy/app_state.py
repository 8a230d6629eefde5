"""Typed keys for the objects an app shares with its handlers (`request.app[KEY]`)."""

from __future__ import annotations

from aiohttp import web

from proxy.accounting import Accountant
from proxy.admin.accounts import Accounts
from proxy.config import Config
from proxy.logs import AccessLog
from proxy.metrics import Metrics
from proxy.routing import Router
from proxy.store import Store
from proxy.upstream import Upstream

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
ROUTER = web.AppKey("router", Router)
STORE = web.AppKey("store", Store)
ACCOUNTANT = web.AppKey("accountant", Accountant)
ACCOUNTS = web.AppKey("accounts", Accounts)
UPSTREAM = web.AppKey("upstream", Upstream)
BOOTSTRAP_KEY = web.AppKey("bootstrap_key", str)
STATE = web.AppKey("state", dict)
ACCESS_LOG = web.AppKey("access_log", AccessLog)  # mutable run state: {"draining": bool}

# Per-request values set by app.py's middleware.
REQUEST_ID = web.RequestKey("request_id", str)  # ours: the response id and accounting id
X_REQUEST_ID = web.RequestKey("x_request_id", str)  # the client's x-request-id, or ours
ACCESS = web.RequestKey("access", dict)  # the access log line's fields, filled as it goes
