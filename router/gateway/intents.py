"""`eth_sendTransaction` object -> `Intent`: the one place the gateway builds intents.

The router owns nonces and fees. A `nonce` in the request must be the router's next one (checked by
the caller); `to` is required (contract creation is not an intent: deploy with eth_signTransaction
or another account); `gasPrice` is refused (EIP-1559 only). `maxFeePerGas` /
`maxPriorityFeePerGas` become the intent's fee overrides (checked against the router's fee cap:
a client's fee cap is never silently ignored). `gas` absent: the intent asks the router to
estimate (`Router.estimate_gas`: the node's eth_estimateGas plus the router's margin), so the
journal records that the gas was estimated and a resubmission compares equal.
"""

from __future__ import annotations

from router.errors import MalformedInput
from router.intent import Intent

from .errors import invalid_params
from .params import TxRequest

__all__ = ["intent_from_tx"]

def intent_from_tx(req: TxRequest, intent_id: str, where: str = "params[0]") -> Intent:
    """Build the intent for a parsed `eth_sendTransaction` object.

    Args:
        req: the parsed transaction object (its `from` already checked against the signer).
        intent_id: the idempotency key the gateway chose.

    Raises:
        JsonRpcError: -32602 naming the field (no `to`, gasPrice, gas out of the router's
            range).
    """
    if req.to is None:
        raise invalid_params(f"{where}.to", "required: contract creation is not routed "
                                            "(deploy with another account or eth_signTransaction)")
    if req.gas_price is not None:
        raise invalid_params(f"{where}.gasPrice", "legacy gas pricing is not routed: the router "
                                                  "sends EIP-1559 transactions (leave it out)")
    try:
        return Intent(req.to, req.value, req.data, req.gas, intent_id,
                      max_fee_per_gas=req.max_fee_per_gas,
                      max_priority_fee_per_gas=req.max_priority_fee_per_gas)
    except MalformedInput as e:
        field = "gas" if "gas" in str(e) else "value" if "value" in str(e) else ""
        raise invalid_params(f"{where}.{field}" if field else where,
                             str(e).split(": ", 1)[-1]) from e
