"""``python -m tests.grpc_burst ADDR N SIZE``: N gRPC calls at once, each carrying one SIZE-byte PNG-headed body.

Prints ``ready`` once its clients and inputs are built, starts the calls when a line arrives on stdin, and prints their
outcomes as one JSON list ("answered", or "StatusCode.X message"). A process of its own, because tritonclient builds
each call's request with the GIL held (copies of the whole body): run in threads beside raw HTTP senders, ten such
calls stalled those senders' ``send`` for up to 4.8 s on 2 cores, long enough for the guard to take the client for
gone (its 5 s linger, nginx's lingering_timeout) and reset it (EPIPE instead of the 413; CI, 2026-12-07).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor


def main(addr: str, n: int, size: int) -> None:
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    body = b"\x89PNG" + bytes(size - 4)
    clients, inputs = [], []
    for _ in range(n):
        clients.append(tgrpc.InferenceServerClient(addr))
        inputs.append(tgrpc.InferInput("image", [1, 1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([[body]], dtype=object))

    def call(i: int) -> str:
        try:
            clients[i].infer("classifier", [inputs[i]])
            return "answered"
        except InferenceServerException as e:
            return f"{e.status()} {e.message()}"
        finally:
            clients[i].close()

    print("ready", flush=True)
    sys.stdin.readline()
    with ThreadPoolExecutor(n) as pool:
        print(json.dumps(list(pool.map(call, range(n)))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
