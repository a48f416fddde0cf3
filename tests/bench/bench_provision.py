"""Production key start-up: run-time provisioning through the KMS relay vs loading the blob directly.

- provisioned: the parent's message over a Unix socket (`send_provision` -> `receive_key`), then
  `load_kms_key` with the message's credentials through the `Forwarder` relay to moto server
  (what `enclave serve --kms-provision --kms-proxy` does once per start);
- baseline: `load_kms_key` of the same blob straight to the same moto server.

The ratio is what the provisioning channel and the relay add to a key load. Blocks alternate so
machine load hits both alike.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

from _harness import Record, compare, percentile, time_interleaved

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

N = int(os.environ.get("SENTINEL_BENCH_PROVISION_N", "30"))


def run() -> list[Record]:
    import logging

    from kms_support import RecipientKmsServer

    from enclave.forward import Forwarder
    from enclave.kms import encrypt_secret, kms_client, load_kms_key
    from enclave.nsm.emulator import EmulatedNsm
    from enclave.provision import Provision, receive_key, send_provision

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    nsm = EmulatedNsm()
    with (
        tempfile.TemporaryDirectory() as tmp,
        RecipientKmsServer(root=nsm.ca.root).running() as server,
    ):
        client = server.client()
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        blob = encrypt_secret(client, key_id, os.urandom(31) + b"\x01")
        moto_port = int(server.endpoint.rsplit(":", 1)[1])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            relay_port = int(s.getsockname()[1])
        server.route_port(relay_port)
        relay = Forwarder(f"tcp:127.0.0.1:{relay_port}", f"tcp:127.0.0.1:{moto_port}")
        relay.start()
        addr = f"unix:{tmp}/provision.sock"
        message = Provision(blob, "testing", "testing", None, key_id)

        def load(p: Provision) -> object:
            c = kms_client("us-east-1", endpoint_url=f"http://127.0.0.1:{relay_port}",
                           access_key_id=p.access_key_id,
                           secret_access_key=p.secret_access_key)  # fmt: skip
            return load_kms_key(p.blob, nsm=nsm, client=c, key_id=p.key_id)

        def provisioned() -> None:
            ready = threading.Event()
            t = threading.Thread(target=receive_key, args=(addr, load),  # type: ignore[arg-type]
                                 kwargs={"on_listening": lambda a: ready.set()})  # fmt: skip
            t.start()
            ready.wait(30)
            send_provision(addr, message, timeout=30)
            t.join(30)

        try:
            samples, baseline = time_interleaved(
                provisioned,
                lambda: load_kms_key(blob, nsm=nsm, client=client, key_id=key_id),
                N,
                blocks=5,
                warmup=2,
            )
        finally:
            relay.close()
    return [
        compare(
            "kms key load, provisioned over a socket + relay",
            samples,
            "kms key load, blob direct",
            baseline,
            extra={"p99_9": percentile(samples, 99.9), "loadavg_1m": os.getloadavg()[0]},
        )
    ]
