"""User errors are recognised only when they are sparkvision's own."""

from __future__ import annotations

from sparkvision.errors import CorruptRecordError, DataError, InvalidParameterError
from sparkvision.errors import user_error_message as message


def test_our_errors_and_their_wrapped_text_are_user_errors():
    assert message(InvalidParameterError("epochs", 0, "use 1 or more")) == (
        "invalid epochs=0: use 1 or more")
    assert message(DataError("bad")) == "bad"
    wrapped = RuntimeError("Traceback ...\n  File x\nsparkvision.errors.DataError: no rows here\n"
                           "\tat org.apache.spark...")
    assert message(wrapped) == "no rows here"
    # Python data sources report the class without its module
    bare = RuntimeError(f"[PYTHON_DATA_SOURCE_ERROR] ...\n{CorruptRecordError('f', 3, 'x')!r}"
                        "\nCorruptRecordError: corrupt TFRecord file f at byte offset 3: x\n")
    assert message(bare).startswith("corrupt TFRecord file f at byte offset 3")


def test_other_libraries_errors_are_not_user_errors():
    assert message(ValueError("invalid literal for int() with base 10: 'x'")) is None
    assert message(RuntimeError("ValueError: invalid value encountered in divide")) is None
    assert message(RuntimeError("psycopg2.DataError: invalid input syntax")) is None
    assert message(RuntimeError("pandas.errors.InvalidParameterError: nope")) is None
    assert message(KeyError("corrupt thing")) is None
