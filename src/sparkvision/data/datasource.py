"""The ``tfrecords`` Spark data source (pyspark Python Data Source API).

Batch read, batch write and streaming read of TFRecord files on a local or shared file
system (executors open the paths directly; ``file:`` URIs are accepted)::

    spark.read.format("tfrecords").load(path)                 # typed columns
    spark.read.format("tfrecords").option("recordType", "ByteArray").load(path)
    df.write.format("tfrecords").mode("overwrite").save(path)
    spark.readStream.format("tfrecords").schema(ddl).load(folder)

Options (case-insensitive): ``recordType`` ``Example`` (default) or ``ByteArray`` (one
binary column ``record``); ``compression`` ``none`` / ``gzip`` (read: detected from the
``.gz`` suffix by default); ``verifyChecksums`` (default true); ``skipCorrupt`` (default
false); read only: ``maxBytesPerBatch`` (record bytes in one Arrow batch, default 4 MB;
a batch also closes at 1,024 rows); write only: ``saveMode`` ``error`` / ``ignore`` (Spark
lets Python data sources run only ``append`` and ``overwrite``; use ``mode("append")``
with this option, or :func:`save_tfrecords`); stream only: ``maxFilesPerTrigger``,
``maxBytesPerTrigger``.

A path is one file or a folder read recursively; names starting with ``.`` or ``_``
(and ``*.tmp``) are skipped. One input partition per file; ``recordsPerPartition=N``
splits uncompressed files every N records (only record headers are scanned to plan).
"""

from __future__ import annotations

from pyspark.sql.datasource import (
    DataSource,
)
from pyspark.sql.types import (
    StructType,
)

from sparkvision import storage
from sparkvision.data.datasource_options import TFRecordOptions, list_input_files, single_path
from sparkvision.data.datasource_read import TFRecordReader
from sparkvision.data.datasource_schema import BYTE_ARRAY_SCHEMA, check_read_schema, infer_schema
from sparkvision.data.datasource_write import TFRecordWriter, has_data, save_tfrecords
from sparkvision.errors import DataError, InvalidParameterError

try:
    from sparkvision.data.datasource_stream import TFRecordStreamReader
except ImportError:  # pyspark 4.0: Python stream sources have no read limits (4.1 added them)
    STREAM_READER: type | None = None
else:
    STREAM_READER = TFRecordStreamReader

__all__ = ["TFRecordDataSource", "save_tfrecords"]

# --------------------------------------------------------------------------- source


class TFRecordDataSource(DataSource):
    """``spark.read.format("tfrecords")``: see the module docstring for the options."""

    @classmethod
    def name(cls) -> str:
        return "tfrecords"

    def _opts(self) -> TFRecordOptions:
        return TFRecordOptions.parse(self.options)

    def schema(self) -> StructType:
        opts = self._opts()
        if opts.record_type == "ByteArray":
            return BYTE_ARRAY_SCHEMA
        return infer_schema(list_input_files(opts), opts)

    def reader(self, schema: StructType) -> TFRecordReader:
        opts = self._opts()
        check_read_schema(schema, opts)
        return TFRecordReader(opts, schema, list_input_files(opts))

    def streamReader(self, schema: StructType):
        if STREAM_READER is None:
            import pyspark

            raise DataError(
                f"streaming the tfrecords source needs pyspark 4.1 or newer (this is pyspark "
                f"{pyspark.__version__}, whose Python stream sources have no read limits): "
                "upgrade pyspark, or stream image files")
        opts = self._opts()
        check_read_schema(schema, opts)
        single_path(opts, "a stream")
        if not storage.isdir(opts.path):
            raise DataError(f"stream source folder {opts.path} does not exist; create it first")
        return STREAM_READER(opts, schema)

    def writer(self, schema: StructType, overwrite: bool) -> TFRecordWriter:
        opts = self._opts()
        single_path(opts, "a write")
        mode = opts.save_mode or ("overwrite" if overwrite else "append")
        if overwrite and mode != "overwrite":
            raise InvalidParameterError(
                "saveMode", mode, "conflicts with mode('overwrite'); drop one of them"
            )
        if storage.isfile(opts.path):
            raise DataError(f"cannot write TFRecords to {opts.path}: it is a file, not a folder")
        exists = has_data(opts.path)
        if exists and mode in ("error", "errorifexists"):
            raise DataError(
                f"path {opts.path} already exists and has data; use mode('overwrite') or "
                "mode('append'), or write somewhere else"
            )
        storage.makedirs(opts.path)
        return TFRecordWriter(opts, schema, mode == "overwrite", skip=exists and mode == "ignore")
