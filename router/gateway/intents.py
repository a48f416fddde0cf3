"""`eth_sendTransaction` object -> `Intent`: the one place the gateway builds intents.

The router owns nonces and fees. A `nonce` in the request must be the router's next one (checked by
the caller); `to` is required (contract creation is not an intent: deploy with eth_signTransaction
or another account); `gasPrice` is refused (EIP-1559 only). `maxFeePerGas` /
`maxPriorityFeePerGas` are passed to the intent when `Intent` has such fields (per-intent fee
overrides) and refused, with a message saying so, when it does not: a client's fee cap must never
be silently ignored. `gas` absent: estimated through the node (`eth_estimateGas`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from router.errors import MalformedInput
from router.intent import Intent

from .errors import invalid_params
from .params import TxRequest

__all__ = ["intent_from_tx"]

_FEE_FIELDS = (("max_fee_per_gas", "maxFeePerGas"),
               ("max_priority_fee_per_gas", "maxPriorityFeePerGas"))


async def intent_from_tx(req: TxRequest, intent_id: str,
                         estimate: Callable[[TxRequest], Awaitable[int]],
                         where: str = "params[0]") -> Intent:
    """Build the intent for a parsed `eth_sendTransaction` object.

    Args:
        req: the parsed transaction object (its `from` already checked against the signer).
        intent_id: the idempotency key the gateway chose.
        estimate: gas estimation for a request without `gas` (the node's eth_estimateGas).

    Raises:
        JsonRpcError: -32602 naming the field (no `to`, gasPrice, unsupported fee fields, gas
            out of the router's range); the node's error when estimation fails (a revert).
    """
    if req.to is None:
        raise invalid_params(f"{where}.to", "required: contract creation is not routed "
                                            "(deploy with another account or eth_signTransaction)")
    if req.gas_price is not None:
        raise invalid_params(f"{where}.gasPrice", "legacy gas pricing is not routed: the router "
                                                  "sends EIP-1559 transactions (leave it out)")
    fields = {f.name for f in dataclasses.fields(Intent)}
    kwargs: dict[str, object] = {"to": req.to, "value": req.value, "data": req.data,
                                 "id": intent_id}
    for name, wire_name in _FEE_FIELDS:
        value = getattr(req, name)
        if value is None:
            continue
        if name not in fields:
            raise invalid_params(
                f"{where}.{wire_name}",
                "per-transaction fees are not supported by this router version: it prices and "
                "re-prices every transaction itself (leave maxFeePerGas / maxPriorityFeePerGas out)")
        kwargs[name] = value
    kwargs["gas"] = req.gas if req.gas is not None else await estimate(req)
    try:
        return Intent(**kwargs)  # type: ignore[arg-type]
    except MalformedInput as e:
        field = "gas" if "gas" in str(e) else "value" if "value" in str(e) else ""
        raise invalid_params(f"{where}.{field}" if field else where,
                             str(e).split(": ", 1)[-1]) from e
