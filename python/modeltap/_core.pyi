"""Type stubs of the native extension ``modeltap._core``."""

from collections.abc import Mapping, Sequence
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEBUG_BUILD",
    "SCHEMA_VERSION",
    "BatchDecodeError",
    "InvalidRecord",
    "Recorder",
    "UnsupportedSchemaVersion",
    "__version__",
    "_after_fork",
    "decode_batch",
    "decode_export_response",
    "encode_export_response",
    "random_id",
]

__version__: str
SCHEMA_VERSION: int
DEBUG_BUILD: bool

class InvalidRecord(ValueError):
    """A record modeltap cannot accept (raised only in strict mode)."""

class BatchDecodeError(ValueError):
    """Bytes that are not a valid modeltap batch."""

class UnsupportedSchemaVersion(BatchDecodeError):
    """A batch written by a newer modeltap."""

def random_id() -> str:
    """A random 128-bit id as 32 hex digits."""

def _after_fork() -> None:
    """Reseeds the id generators; called in a child after fork."""

def decode_batch(data: bytes, *, columns: bool = False) -> dict[str, Any]:
    """Decodes an encoded batch into numpy columns and lists."""

def encode_export_response(accepted: bool, duplicate: bool, n_records: int) -> bytes:
    """Encodes the collector's ExportResponse."""

def decode_export_response(data: bytes) -> tuple[bool, bool, int]:
    """Decodes an ExportResponse into (accepted, duplicate, n_records)."""

@final
class Recorder:
    """The native half of ``modeltap.Agent``."""

    def __new__(
        cls,
        *,
        model: str,
        version: str,
        agent_id: str,
        params: Mapping[str, str] | None = None,
        host: str = ...,
        pid: int = 0,
        start_unix_nano: int = 0,
        agent_version: str = ...,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] = ...,
        buffer_size: int = 65536,
        batch_size: int = 4096,
        flush_interval_s: float = 1.0,
        max_pending_batches: int = 64,
        on_full: str = "drop",
        strict: bool = False,
        warn_interval_s: float = 10.0,
    ) -> Recorder: ...
    def log(
        self,
        features: Any,
        prediction: Any,
        probabilities: Any = None,
        *,
        latency_s: Any = None,
        request_id: Any = None,
        error: Any = None,
        attributes: Any = None,
    ) -> str: ...
    def log_batch(
        self,
        x: npt.NDArray[np.floating[Any]] | Any,
        predictions: Any,
        probabilities: Any = None,
        *,
        latency_s: Any = None,
        request_ids: Sequence[str] | None = None,
    ) -> list[str]: ...
    def take_batch(self, timeout_s: float) -> tuple[int, int, bytes] | None: ...
    def finished(self) -> bool: ...
    def settle(self, batch_seq: int, outcome: str) -> bool: ...
    def unspool(self, n: int, outcome: str) -> None: ...
    def count(self, n: int, outcome: str) -> None: ...
    def count_error(self) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...
    def shutdown(self) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def add_system_sample(
        self,
        *,
        unix_nano: int,
        process_cpu_percent: float,
        rss_bytes: int,
        threads: int,
        system_cpu_percent: float = ...,
        system_memory_used_bytes: int = 0,
        system_memory_total_bytes: int = 0,
        gpus: list[tuple[int, str, float, int, int, float]] | None = None,
    ) -> None: ...
    @property
    def feature_names(self) -> list[str] | None: ...
    @property
    def categorical(self) -> list[str]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def agent_id(self) -> str: ...
