"""Reading JSON that comes from outside: one place that turns every decoding failure into exit 2."""

from __future__ import annotations

import json
from typing import Any

from verify.errors import MalformedInput

__all__ = ["loads_json"]


def loads_json(data: bytes, what: str) -> Any:
    """The JSON value in `data`.

    Raises:
        MalformedInput: not UTF-8 or not JSON; the message names `what` was being read.
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedInput(f"{what} is not UTF-8 JSON ({e})") from e
