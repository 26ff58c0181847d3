"""Arrow in and out of the inference UDFs: an image Binary column → uint8 (N, H, W, C)
numpy, and rows of numbers → the ``list<float>`` / ``list<double>`` columns the UDFs emit
(``rawPrediction`` and ``probability``, features, attribution maps), which the JVM turns
into pyspark.ml vectors with ``array_to_vector`` where a vector is wanted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa


def typed_arrow_udf(fn: Callable[..., Any], return_type: str) -> Any:
    """``pyspark.sql.functions.arrow_udf(fn, return_type)``, its kind (scalar, or iterator
    of batches) read from ``fn``'s type hints as pyspark prefers. On pyspark 4.0, which has
    no Arrow UDFs, the same ``fn`` (an iterator of Arrow arrays, or of tuples of them, to an
    iterator of Arrow arrays) runs inside a pandas UDF that converts at its edges."""
    try:
        from pyspark.sql.functions import arrow_udf
    except ImportError:  # pyspark 4.0
        return _pandas_twin(fn, return_type)
    # pyspark's stubs only type the form that also passes a functionType (which warns)
    return arrow_udf(fn, return_type)  # type: ignore[call-overload]


def _pandas_twin(fn: Callable[..., Any], return_type: str) -> Any:
    from pyspark.sql.functions import pandas_udf

    return pandas_udf(pandas_function(fn), return_type)  # type: ignore[call-overload]


def pandas_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as the function of an iterator pandas UDF (its type hints say which): each
    batch's Series become Arrow arrays for ``fn`` and its Arrow results become a Series (a
    DataFrame for a struct, as pandas UDFs return structs)."""
    from collections.abc import Iterator
    from typing import get_type_hints

    import pandas as pd

    takes_tuples = "tuple" in str(next(iter(get_type_hints(fn).values()))).lower()

    def arrow(series: pd.Series) -> pa.Array:
        return pa.Array.from_pandas(series)

    def twin(batches: Any) -> Any:
        given = ((tuple(arrow(s) for s in b) if takes_tuples else arrow(b)) for b in batches)
        for out in fn(given):
            if pa.types.is_struct(out.type):
                yield pa.Table.from_struct_array(out).to_pandas()
            else:
                yield out.to_pandas()

    arg = Iterator[tuple[pd.Series, ...]] if takes_tuples else Iterator[pd.Series]
    twin.__annotations__ = {"batches": arg, "return": Iterator[pd.Series]}
    return twin


def image_batch(column: Any, image_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (N, H, W, C) images of a Binary column (raw HWC bytes, or PNG/JPEG as
    ``prepare --store encoded`` writes them; a view of the Arrow buffer when raw)."""
    from sparkvision.data.feed import binary_column_to_array

    h, w, c = image_shape
    return binary_column_to_array(column, h * w * c, (h, w, c)).reshape(-1, h, w, c)


def list_array(values: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """Row ``i`` of ``values`` (N, …), flattened row-major, as item ``i`` of a
    ``list<value_type>`` array (``pa.float32()`` or ``pa.float64()``). An offset beyond
    int32 (more than 2³¹ numbers in one batch) is an error, not a wrap-around."""
    n, width = values.shape[0], int(np.prod(values.shape[1:]))
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * width, pa.int32())
    flat = np.ascontiguousarray(values, dtype=value_type.to_pandas_dtype()).reshape(-1)
    return pa.ListArray.from_arrays(offsets, pa.array(flat, value_type))
