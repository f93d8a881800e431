"""The RESP encoding of the scripts' commands is redis-py's own, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

from gateway.store.redis import pack_command

# redis-py's pure-Python serializer, with the encoding its clients use by default.
_ENCODE = Encoder("utf-8", "strict", False).encode  # type: ignore[no-untyped-call] # redis-py leaves it unannotated
_REFERENCE = PythonRespSerializer(6000, _ENCODE)


@given(
    st.sampled_from(["EVALSHA", "SCRIPT"]),
    st.lists(st.one_of(st.text(), st.integers(), st.binary()), max_size=50),
)
def test_packed_as_redis_py_packs_it(name: str, args: list[str | int | bytes]) -> None:
    expected = b"".join(_REFERENCE.pack(name, *args))  # type: ignore[no-untyped-call] # as above
    assert pack_command([name, *args]) == expected


def test_the_script_call_shape() -> None:
    packed = pack_command(["EVALSHA", "ab", 1, "gw:{t}:k", -1, b"\x00"])
    assert packed == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$8\r\ngw:{t}:k\r\n$2\r\n-1\r\n$1\r\n\x00\r\n"
    )
