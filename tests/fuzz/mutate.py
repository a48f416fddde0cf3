"""Byte-level mutators for hypothesis, in the spirit of libFuzzer's: start from a seed, apply a few
edits (bit flips, interesting values, splices of dictionary tokens, deletions, duplications,
truncations), so that the parsers see inputs that get past their first checks."""

from __future__ import annotations

from hypothesis import strategies as st

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


@st.composite
def _edit(draw: st.DrawFn, data: bytearray, tokens: tuple[bytes, ...]) -> None:
    n = len(data)
    kind = draw(st.sampled_from(["flip", "set", "token", "insert", "delete", "dup", "cut"]))
    at = draw(st.integers(0, n)) if n else 0
    if kind == "flip" and n:
        data[min(at, n - 1)] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set" and n:
        data[min(at, n - 1)] = draw(st.sampled_from(_INTERESTING))
    elif kind == "token" and tokens:
        token = draw(st.sampled_from(tokens))
        if draw(st.booleans()):
            data[at:at] = token  # insert
        else:
            data[at : at + len(token)] = token  # overwrite
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete" and n:
        del data[at : at + draw(st.integers(1, 64))]
    elif kind == "dup" and n:
        start = draw(st.integers(0, n - 1))
        data[at:at] = data[start : start + draw(st.integers(1, 64))]
    elif kind == "cut" and n:
        del data[at:]


@st.composite
def mutated(
    draw: st.DrawFn, seeds: list[bytes], tokens: tuple[bytes, ...], max_len: int
) -> bytes:
    """A seed with 1..6 edits, cut to `max_len`."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        draw(_edit(data, tokens))
    return bytes(data[:max_len])


def inputs(seeds: list[bytes], tokens: tuple[bytes, ...], max_len: int) -> st.SearchStrategy[bytes]:
    """Mostly mutated seeds; some raw random bytes and token soups."""
    return st.one_of(
        mutated(seeds, tokens, max_len),
        mutated(seeds, tokens, max_len),
        mutated(seeds, tokens, max_len),
        st.binary(max_size=min(max_len, 512)),
        st.lists(st.sampled_from(tokens), max_size=24).map(b"".join) if tokens else st.just(b""),
    )
