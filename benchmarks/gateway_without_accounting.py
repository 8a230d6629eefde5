"""The gateway with accounting switched off, for `bench.py --no-accounting` only.

It measures what auth, rate limits and quota holds cost: every request is admitted with
any key, and nothing is settled. Never run it anywhere else.
"""

from __future__ import annotations

import sys
from typing import Any

from proxy.accounting import Accountant, Admission


async def identify(self: Accountant, authorization: str | None) -> tuple[str, str]:
    return ("bench", "bench")


async def admit(self: Accountant, owner: tuple[str, str], request_id: str, *,
                cap: int = 0, **_: Any) -> Admission:  # fmt: skip
    return Admission(owner[0], owner[1], request_id, {}, cap)


def settle_soon(self: Accountant, *args: Any, **kwargs: Any) -> None:
    return None


Accountant.identify = identify  # type: ignore[method-assign]
Accountant.admit = admit  # type: ignore[method-assign]
Accountant.settle_soon = settle_soon  # type: ignore[method-assign]

if __name__ == "__main__":
    from proxy.__main__ import main

    sys.exit(main())
