"""TFRecord framing and tf.train.Example codec, checked against independent references."""

from __future__ import annotations

import gzip
import io
import math
import random
import struct

import google_crc32c
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sparkvision.data import tf_example, tfrecord
from sparkvision.errors import CorruptRecordError, DataError, InvalidParameterError

# --------------------------------------------------------------------------- references


def reference_masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % (1 << 32)


def _example_classes(packed: bool) -> dict[str, type]:
    """Build tf.train.Example's messages with protobuf's generic API (no TensorFlow)."""
    F = descriptor_pb2.FieldDescriptorProto
    package = "tfpacked" if packed else "tfunpacked"
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"{package}/example.proto", package=package, syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]], oneof=None):
        msg = fdp.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{package}.{type_name}"
            if oneof:
                field.oneof_index = 0
            if label == F.LABEL_REPEATED and ftype in (F.TYPE_FLOAT, F.TYPE_INT64):
                field.options.packed = packed
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    message(
        "Feature",
        [
            ("bytes_list", 1, F.TYPE_MESSAGE, opt, "BytesList"),
            ("float_list", 2, F.TYPE_MESSAGE, opt, "FloatList"),
            ("int64_list", 3, F.TYPE_MESSAGE, opt, "Int64List"),
        ],
        oneof="kind",
    )
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, "Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=f".{package}.Feature"
    )
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, "Features")])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in ("Example",)
    }


PB_PACKED = _example_classes(packed=True)["Example"]
PB_UNPACKED = _example_classes(packed=False)["Example"]

SAMPLE: dict[str, tf_example.Feature] = {
    "label": ("int64", [7]),
    "ints": ("int64", [0, 1, -1, 127, 128, 300, -(2**63), 2**63 - 1] + list(range(-20, 20))),
    "small": ("int64", list(range(40))),
    "empty_ints": ("int64", []),
    "score": ("float", [0.25]),
    "floats": ("float", [1.5, -2.0, 3.1415927410125732] + [i / 8 for i in range(30)]),
    "image": ("bytes", [bytes(range(256)) * 3]),
    "names": ("bytes", [b"a", b"", "h\u00e9llo".encode()]),
}


def _pb_example(cls: type, features: dict[str, tf_example.Feature]):
    example = cls()
    for name, (kind, values) in features.items():
        target = example.features.feature[name]
        getattr(target, f"{kind}_list").value.extend(values)
        if not values:
            getattr(target, f"{kind}_list").SetInParent()
    return example


def _pb_to_dict(example) -> dict[str, tuple[str, list]]:
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind.removesuffix("_list"), list(getattr(feature, kind).value))
    return out


def _float32(values: list[float]) -> list[float]:
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


# --------------------------------------------------------------------------- CRC + framing


def test_crc32c_known_vectors():
    assert google_crc32c.value(b"") == 0
    assert google_crc32c.value(b"123456789") == 0xE3069283


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xA282EAD8),
        (b"123456789", 0xC78AB0E5),
        (struct.pack("<Q", 0), 0x07980329),  # a zero length header, as TensorFlow frames it
        (struct.pack("<Q", 5), reference_masked(google_crc32c.value(struct.pack("<Q", 5)))),
    ],
)
def test_masked_crc32c(data: bytes, expected: int):
    assert tfrecord.masked_crc32c(data) == expected
    assert expected == reference_masked(google_crc32c.value(data))


def test_frame_known_record_byte_for_byte():
    data = b"hello"
    length = b"\x05\x00\x00\x00\x00\x00\x00\x00"
    length_crc = reference_masked(google_crc32c.value(length)).to_bytes(4, "little")
    data_crc = reference_masked(google_crc32c.value(data)).to_bytes(4, "little")
    buf = io.BytesIO()
    written = tfrecord.write_record(buf, data)
    assert buf.getvalue() == length + length_crc + data + data_crc
    assert written == 8 + 4 + 5 + 4


def test_frame_empty_record_matches_tensorflow_bytes():
    # length 0, masked crc of 8 zero bytes, no data, masked crc of b"" (0xa282ead8)
    expected = bytes(8) + bytes.fromhex("29039807") + bytes.fromhex("d8ea82a2")
    assert tfrecord.frame_record(b"") == expected


def _file(records: list[bytes]) -> bytes:
    return b"".join(tfrecord.frame_record(r) for r in records)


def test_round_trip_many_records():
    records = [bytes([i]) * i for i in range(50)]
    got = list(tfrecord.iter_records(io.BytesIO(_file(records)), "mem"))
    assert got == records


def test_truncated_data_raises_with_offset():
    raw = _file([b"abc", b"defgh"])
    second = 16 + 3
    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.iter_records(io.BytesIO(raw[:-2]), "f.tfrecord"))
    assert info.value.offset == second
    assert info.value.path == "f.tfrecord"
    assert "truncated" in info.value.reason
    assert f"offset {second}" in str(info.value)


def test_truncated_header_raises_with_offset():
    raw = _file([b"abc"]) + b"\x01\x02\x03"
    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.iter_records(io.BytesIO(raw), "f"))
    assert info.value.offset == 19
    assert "header" in info.value.reason


def test_bad_length_crc_raises():
    raw = bytearray(_file([b"abc", b"xyz"]))
    raw[19 + 8] ^= 0xFF  # second record's length crc
    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.iter_records(io.BytesIO(bytes(raw)), "f"))
    assert info.value.offset == 19
    assert "length checksum" in info.value.reason


def test_bad_data_crc_raises_and_skip_counts():
    records = [b"one", b"two!", b"three"]
    raw = bytearray(_file(records))
    raw[19 + 12] ^= 0x01  # flip the first data byte of the second record (starts at 19)
    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.iter_records(io.BytesIO(bytes(raw)), "f"))
    assert info.value.offset == 19
    assert "data checksum" in info.value.reason

    stats: dict[str, int] = {}
    got = list(tfrecord.iter_records(io.BytesIO(bytes(raw)), "f", skip_corrupt=True, stats=stats))
    assert got == [b"one", b"three"]
    assert stats == {"records": 2, "skipped_records": 1}

    unchecked = list(tfrecord.iter_records(io.BytesIO(bytes(raw)), "f", verify_checksums=False))
    assert unchecked == [b"one", b"uwo!", b"three"]


def test_skip_corrupt_stops_at_truncation():
    raw = _file([b"one", b"two"]) + b"\x10\x00"
    stats: dict[str, int] = {}
    got = list(tfrecord.iter_records(io.BytesIO(raw), "f", skip_corrupt=True, stats=stats))
    assert got == [b"one", b"two"]
    assert stats == {"records": 2, "unreadable_tails": 1}


def test_gzip_round_trip_and_autodetect(tmp_path):
    records = [f"record {i}".encode() * (i + 1) for i in range(100)]
    path = str(tmp_path / "data.tfrecord.gz")
    with tfrecord.open_for_write(path, "gzip") as f:
        for r in records:
            tfrecord.write_record(f, r)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert gzip.decompress(open(path, "rb").read()) == _file(records)
    assert list(tfrecord.read_file_records(path)) == records  # auto-detected by suffix
    assert list(tfrecord.read_file_records(path, "gzip")) == records
    plain = str(tmp_path / "data.tfrecord")
    with tfrecord.open_for_write(plain) as f:
        for r in records:
            tfrecord.write_record(f, r)
    assert open(plain, "rb").read() == _file(records)
    assert list(tfrecord.read_file_records(plain, "none")) == records


def test_truncated_gzip_raises_or_stops(tmp_path):
    path = tmp_path / "bad.tfrecord.gz"
    path.write_bytes(gzip.compress(_file([b"x" * 1000] * 50))[:-40])
    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.read_file_records(str(path)))
    assert info.value.offset % 1016 == 0
    stats: dict[str, int] = {}
    got = list(tfrecord.read_file_records(str(path), skip_corrupt=True, stats=stats))
    assert 0 < len(got) < 50 and stats["unreadable_tails"] == 1


def test_bad_compression_name():
    with pytest.raises(InvalidParameterError, match="compression"):
        tfrecord.normalize_compression("zstd")


# --------------------------------------------------------------------------- Example codec


def _expected(features: dict[str, tf_example.Feature]) -> dict[str, tuple[str, list]]:
    out = {}
    for name, (kind, values) in features.items():
        out[name] = (kind, _float32(values) if kind == "float" else list(values))
    return out


@pytest.mark.parametrize("cls", [PB_PACKED, PB_UNPACKED], ids=["packed", "unpacked"])
def test_decode_protobuf_encoded_example(cls):
    serialized = _pb_example(cls, SAMPLE).SerializeToString()
    assert tf_example.decode_example(serialized) == _expected(SAMPLE)


def test_packed_and_unpacked_encodings_differ():
    # Guard that the two reference encoders really produce the two wire formats.
    packed = _pb_example(PB_PACKED, {"x": ("int64", [1, 2, 3])}).SerializeToString()
    unpacked = _pb_example(PB_UNPACKED, {"x": ("int64", [1, 2, 3])}).SerializeToString()
    assert packed != unpacked
    assert tf_example.decode_example(packed) == tf_example.decode_example(unpacked)


@pytest.mark.parametrize("cls", [PB_PACKED, PB_UNPACKED], ids=["packed", "unpacked"])
def test_protobuf_parses_our_encoding(cls):
    parsed = cls.FromString(tf_example.encode_example(SAMPLE))
    assert _pb_to_dict(parsed) == _expected(SAMPLE)


def test_our_encoding_matches_protobuf_bytes_for_one_feature():
    features = {"label": ("int64", [-3, 5])}
    ours = tf_example.encode_example(features)
    assert ours == _pb_example(PB_PACKED, features).SerializeToString()


def test_negative_int64_uses_ten_byte_varint():
    ours = tf_example.encode_example({"n": ("int64", [-1])})
    assert b"\xff" * 9 + b"\x01" in ours
    assert tf_example.decode_example(ours) == {"n": ("int64", [-1])}


def test_float_rounding_and_overflow():
    decoded = tf_example.decode_example(
        tf_example.encode_example({"f": ("float", [0.1, 1e39, -1e39])}))
    kind, values = decoded["f"]
    assert kind == "float"
    assert values[0] == _float32([0.1])[0] != 0.1
    assert values[1] == math.inf and values[2] == -math.inf


def test_str_values_are_utf8_and_empty_example():
    decoded = tf_example.decode_example(tf_example.encode_example({"s": ("bytes", ["\u00e9"])}))
    assert decoded == {"s": ("bytes", ["\u00e9".encode()])}
    assert tf_example.decode_example(tf_example.encode_example({})) == {}
    assert tf_example.decode_example(b"") == {}


def test_unknown_fields_are_skipped():
    base = tf_example.encode_example({"a": ("int64", [1])})
    extra = b"\x10\x05" + b"\x1a\x03abc" + b"\x25\x00\x00\x80\x3f" + base  # fields 2, 3, 4
    assert tf_example.decode_example(extra) == {"a": ("int64", [1])}


def test_malformed_example_raises_data_error():
    good = tf_example.encode_example(SAMPLE)
    with pytest.raises(DataError, match="malformed"):
        tf_example.decode_example(good[:-3])
    with pytest.raises(DataError, match="malformed"):
        tf_example.decode_example(b"\x0a\xff")


def test_encode_rejects_bad_values():
    with pytest.raises(InvalidParameterError, match="feature 'x'"):
        tf_example.encode_example({"x": ("int64", [2**63])})
    with pytest.raises(InvalidParameterError):
        tf_example.encode_example({"x": ("complex", [1])})  # type: ignore[dict-item]


def test_damaged_examples_raise_only_data_error():
    good = tf_example.encode_example(SAMPLE)
    rng = random.Random(1234)
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(3000):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged))]
        try:
            result = tf_example.decode_example(bytes(damaged))
        except DataError:
            outcomes["rejected"] += 1
        else:
            assert isinstance(result, dict)
            outcomes["decoded"] += 1
    assert outcomes["rejected"] > 100 and outcomes["decoded"] > 100
