"""Framework integrations: one module per framework (scikit-learn,
PyTorch, ASGI, gRPC servers, MLflow, ...), each importing its framework
only when it is used and declared as an optional extra
(``pip install "modeltap[NAME]"``); importing :mod:`modeltap` or this
package never imports a framework.

The rule for a module here: no top-level import of its framework (import
it inside the functions that need it, or under ``TYPE_CHECKING``), and a
plain ``ImportError`` naming the extra when the framework is missing.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str) -> object:
    """Imports a framework for an integration, or raises ``ImportError``
    saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this integration needs {module}: pip install 'modeltap[{extra}]'"
        ) from e


__all__ = ["require"]
