"""``modeltap.connect``: a store file or a collector's address, the same read
API either way. It lives beside both sources (it imports each when asked
for it), so that neither imports the other nor the read API imports them."""

from __future__ import annotations

import os
import re
from typing import Any

_ADDRESS = re.compile(r"(?:grpc://)?(?:\[[0-9a-fA-F:.]+\]|[\w.\-]+):\d{1,5}")


def connect(target: str | os.PathLike[str], **options: Any) -> Any:
    """A :class:`modeltap.Store` for a store file, a :class:`modeltap.Client`
    for a collector's address (``HOST:PORT``): the same read API either way.
    A path that exists is a store; anything shaped ``host:port`` that is not
    a file is a collector."""
    text = os.fspath(target)
    if isinstance(text, bytes):
        text = text.decode()
    if os.path.exists(text):
        from modeltap.collector.store import Store

        return Store(text, **options)
    if _ADDRESS.fullmatch(text):
        from modeltap.client import Client

        return Client(text.removeprefix("grpc://"), **options)
    raise ValueError(
        f"{text!r} is neither a store file that exists nor a collector address (HOST:PORT)"
    )
