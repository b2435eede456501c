"""Type stubs of the native extension ``modeltap._core``."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, final, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEBUG_BUILD",
    "SCHEMA_VERSION",
    "BatchDecodeError",
    "InternalError",
    "InvalidRecord",
    "Recorder",
    "ReferenceFormatError",
    "RequestIds",
    "RequestIdsIter",
    "Span",
    "SpanContext",
    "UnsupportedSchemaVersion",
    "__version__",
    "_after_fork",
    "assemble_reference",
    "build_categorical_column",
    "build_numeric_column",
    "clip_values",
    "current_span_context",
    "decode_batch",
    "decode_drift_request",
    "decode_export_response",
    "decode_query_chunk",
    "decode_reference_upload",
    "decode_text_response",
    "drift",
    "encode_drift_request",
    "encode_export_response",
    "encode_label_batch",
    "encode_query_chunk",
    "encode_reference_upload",
    "encode_strings",
    "encode_text_response",
    "histograms",
    "merge_profiles",
    "profile_columns",
    "profile_fingerprint",
    "random_id",
    "record_latency",
    "reference_info",
    "spell_floats",
    "stage_latency",
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

class ReferenceFormatError(ValueError):
    """Not a reference file, a damaged one, or one from a newer modeltap."""

class InternalError(RuntimeError):
    """An internal failure caught at the binding boundary (a bug)."""

def build_numeric_column(
    name: str,
    role_name: str,
    class_index: int,
    values: npt.NDArray[np.float64],
    bins: int = 10,
    equal_width: bool = False,
) -> tuple[bytes, bytes]:
    """A numeric reference column: (spec, profile) as encoded bytes."""

def build_categorical_column(
    name: str,
    role_name: str,
    class_index: int,
    values: Sequence[str],
    counts: Sequence[int],
    missing: int,
    max_categories: int = ...,
    chosen: Sequence[str] | None = None,
    seen: Sequence[str] = ...,
) -> tuple[bytes, bytes]:
    """A categorical reference column from distinct values and counts;
    ``chosen``: the categories to keep (else the most frequent); ``seen``:
    every value the reference held (else the values given)."""

def assemble_reference(
    model: str,
    version: str,
    columns: Sequence[tuple[bytes, bytes]],
    rows: int,
    created_unix_nano: int,
) -> bytes:
    """A reference file from encoded columns."""

def reference_info(data: bytes) -> dict[str, Any]:
    """Checks a reference file and describes it."""

def merge_profiles(parts: Sequence[bytes]) -> bytes | None:
    """Merges encoded window profiles, each checked first."""

def drift(
    reference: bytes,
    window: bytes | Sequence[bytes],
    rules: Mapping[str, tuple[str, float]] | None = None,
    defaults: Mapping[str, tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """Drift of a window profile against a reference."""

def profile_fingerprint(data: bytes) -> str: ...
def histograms(reference: bytes, window: bytes) -> list[dict[str, Any]]:
    """Reference and window counts per column in the bins drift compares."""

def profile_columns(
    reference: bytes,
    numeric: Sequence[tuple[int, npt.NDArray[np.floating[Any]]]],
    categorical: Sequence[tuple[int, npt.NDArray[np.signedinteger[Any]], Sequence[str]]],
    start_unix_nano: int = 0,
    width_nano: int = 0,
    text: Sequence[
        tuple[
            int,
            npt.NDArray[np.signedinteger[Any]],
            npt.NDArray[np.uint8],
            npt.NDArray[np.uint8] | None,
            int,
        ]
    ] = ...,
    number_categories: Sequence[tuple[int, npt.NDArray[np.floating[Any]]]] = ...,
    views: Sequence[
        tuple[
            int,
            npt.NDArray[np.uint8],
            Sequence[npt.NDArray[np.uint8]],
            npt.NDArray[np.uint8] | None,
            int,
        ]
    ] = ...,
    objects: Sequence[tuple[int, npt.NDArray[np.object_]]] = ...,
) -> bytes | None: ...
def encode_strings(
    values: npt.NDArray[np.object_],
    spell_all: bool = False,
) -> tuple[npt.NDArray[np.int32], list[str]] | None: ...
def spell_floats(values: npt.NDArray[np.float64]) -> list[str | None]:
    """Float categories spelled canonically (integral values as integers,
    others as Python's repr); None for NaN."""

def clip_values(values: list[str]) -> list[str]:
    """Category values cut as an agent cuts them (1,024 bytes)."""

def random_id() -> str:
    """A random 128-bit id as 32 hex digits."""

def _after_fork() -> None:
    """Reseeds the id generators; called in a child after fork."""

def decode_batch(data: bytes, *, columns: bool = False) -> dict[str, Any]:
    """Decodes an encoded batch into numpy columns and lists.

    ``truth`` holds the batch's labels (None when it has none): by default
    ``request_ids`` (list of str), ``labels`` (float for a number, int for
    an integer class, str for a class) and ``unix_nano`` (uint64 array);
    with ``columns=True`` ``unix_nano``, the ids spelled as Arrow strings
    are: ``request_id_offsets`` (int64, n + 1) into ``request_id_data``
    (bytes; 16-byte ids as their 32 hex digits), ``kind``
    (uint8: 0 number, 1 int, 2 label), ``values`` (float64, NaN for label
    rows), ``label_codes`` (int32, -1 for number and int rows) indexing
    ``label_values`` (list of str)."""

def encode_label_batch(
    agent_id: str,
    batch_seq: int,
    model: str,
    version: str,
    request_ids: Sequence[str],
    labels: Sequence[object] | npt.NDArray[Any],
    unix_nano: npt.NDArray[np.uint64] | Sequence[int] | None = None,
) -> bytes:
    """A whole ``RecordBatch`` of labels only (for label services without an
    agent), which ``decode_batch`` and the collector accept. An int or bool
    label is an integer class (``True`` is 1), a float a number (whether
    integral or not), a str a class. ``unix_nano`` None: now for all.
    Raises ValueError naming the first bad label (``label {i}: ...``)."""

def encode_export_response(accepted: bool, duplicate: bool, n_records: int) -> bytes:
    """Encodes the collector's ExportResponse."""

def decode_export_response(data: bytes) -> tuple[bool, bool, int]:
    """Decodes an ExportResponse into (accepted, duplicate, n_records)."""

def encode_reference_upload(model: str, version: str, reference: bytes) -> bytes: ...
def decode_reference_upload(data: bytes) -> tuple[str, str, bytes]: ...
def encode_drift_request(
    model: str,
    version: str,
    from_unix_nano: int,
    to_unix_nano: int,
    rules: Sequence[str] = ...,
) -> bytes: ...
def decode_drift_request(data: bytes) -> tuple[str, str, int, int, list[str]]: ...
def encode_text_response(text: str) -> bytes: ...
def decode_text_response(data: bytes) -> str: ...
def encode_query_chunk(arrow_ipc: bytes) -> bytes: ...
def decode_query_chunk(data: bytes) -> bytes: ...

@final
class RequestIds:
    """The request ids of a ``log_batch`` call, in row order: a read-only
    sequence of ``str``, each spelled only when read."""

    def __new__(cls, ids: Sequence[str] | None = None) -> RequestIds: ...
    @staticmethod
    def join(parts: Sequence[RequestIds]) -> RequestIds:
        """The ids of several calls, in order, as one ``RequestIds``."""
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...
    @overload
    def __getitem__(self, key: int, /) -> str: ...
    @overload
    def __getitem__(self, key: slice, /) -> list[str]: ...
    def __iter__(self) -> RequestIdsIter: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __add__(self, value: list[str] | RequestIds, /) -> list[str]: ...
    def __radd__(self, value: list[str], /) -> list[str]: ...
    def index(self, value: object) -> int:
        """The position of the first id equal to ``value``."""
    def count(self, value: object) -> int:
        """How many ids equal ``value``."""
    def __reduce__(self) -> tuple[type[RequestIds], tuple[list[str]]]: ...
    def tolist(self) -> list[str]:
        """Every id as a ``list[str]``."""

@final
class RequestIdsIter:
    def __iter__(self) -> RequestIdsIter: ...
    def __next__(self) -> str: ...

@final
class SpanContext:
    """A W3C trace context: the trace and span a new span continues."""

    def __new__(
        cls,
        trace_id: int | str,
        span_id: int | str,
        sampled: bool = True,
        *,
        remote: bool = True,
        trace_state: str | None = None,
    ) -> SpanContext: ...
    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def trace_id_hex(self) -> str: ...
    @property
    def span_id_hex(self) -> str: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def is_remote(self) -> bool: ...
    @property
    def trace_state(self) -> str | None: ...
    def traceparent(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Span:
    """One stage of a request being timed (see ``Agent.span``)."""

    def __enter__(self) -> Span: ...
    def __exit__(
        self, _exc_type: object = None, exc: BaseException | None = None, _tb: object = None
    ) -> bool: ...
    def start(self) -> Span: ...
    def end(self, error: BaseException | None = None) -> None: ...
    def set_attribute(self, key: object, value: object) -> None: ...
    def set_input(self, value: object) -> None: ...
    def set_output(self, value: object) -> None: ...
    def set_status(self, ok: bool, description: str | None = None) -> None: ...
    def record_exception(self, exc: BaseException) -> None: ...
    @property
    def context(self) -> SpanContext | None: ...
    @property
    def name(self) -> str: ...
    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]: ...

def current_span_context() -> SpanContext | None: ...
def stage_latency(parts: list[bytes]) -> list[dict[str, Any]]: ...
def record_latency(parts: list[bytes]) -> dict[str, Any]: ...

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
        reference: bytes | None = None,
        window_s: float = 60.0,
        sample_rate: float = 1.0,
        buffer_bytes: int = ...,
        trace_sample_rate: float = 1.0,
    ) -> Recorder: ...
    def set_capture(self, hook: Callable[[str, str, Any], str | None]) -> bool: ...
    def span(
        self,
        name: str,
        *,
        kind: str = "internal",
        attributes: Mapping[str, Any] | None = None,
        parent: SpanContext | None = None,
    ) -> Span: ...
    def start_span(self, name: str) -> Span: ...
    def forward_to(self, child: Recorder) -> None: ...
    def last_error(self) -> str | None: ...
    def profile(self, since_unix_nano: int = 0, until_unix_nano: int = ...) -> bytes | None: ...
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
        coded: bool = False,
        overflow: Mapping[int, Sequence[tuple[int, str]]] | None = None,
    ) -> RequestIds: ...
    def log_label(self, request_id: Any, label: Any, *, unix_nano: int | None = None) -> None: ...
    def log_labels(
        self,
        request_ids: Any,
        labels: Any,
        *,
        unix_nano: int | npt.NDArray[np.uint64] | Sequence[int] | None = None,
    ) -> int: ...
    def init_schema(
        self,
        names: Sequence[str],
        categorical: Sequence[str],
        out_width: int = 1,
        prob_width: int | None = None,
    ) -> list[str]: ...
    def intern(self, feature: int, values: Sequence[Any]) -> list[float]: ...
    def reject(self, n: int, message: str) -> None: ...
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
