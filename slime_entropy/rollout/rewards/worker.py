"""Entry point of a grading process: ``python -m slime_entropy.rollout.rewards.worker <inbox fd> <outbox fd>``.

Receives ``(function_path, args, kwargs)`` messages, answers ``("ok", result)`` or ``("error", traceback)``, and
exits on ``None`` or when the parent's end of the pipe closes. Each task runs in this process's main thread, so
signal-based timeouts (math-verify's) work.
"""

from __future__ import annotations

import sys
import traceback
from multiprocessing.connection import Connection

from slime_entropy.rollout.rewards.pool import load_function


def serve(inbox: Connection, outbox: Connection) -> None:
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn_path, args, kwargs = message
        try:
            result = load_function(fn_path)(*args, **kwargs)
            outbox.send(("ok", result))
        except BaseException:  # noqa: B036 - the parent decides what a failure means
            outbox.send(("error", traceback.format_exc()))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
