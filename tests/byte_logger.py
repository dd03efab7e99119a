"""An HTTP/1.1 app that keeps every byte it receives: what reached the app through runwarden,
compared byte for byte by the tests (issue 22).

    python byte_logger.py PORT

Each request is answered 200 with a JSON of what h11 parsed of it (method, target, headers,
body); one whose target holds `sleep` after 0.3 s. `GET /_log` (asked directly, not through
runwarden) answers every other connection's bytes as latin-1 text, in the order the
connections opened; `DELETE /_log` forgets them.
"""

from __future__ import annotations

import asyncio
import json
import sys

import h11

CONNECTIONS: list[bytearray] = []


def _answer(conn: h11.Connection, body: bytes, head_only: bool) -> bytes:
    """A 200 with `body` (a HEAD request's: its head only)."""
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    head = conn.send(h11.Response(status_code=200, headers=headers))
    data = b"" if head_only else conn.send(h11.Data(data=body))
    return head + data + conn.send(h11.EndOfMessage())


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    received = bytearray()
    logged = False
    request: h11.Request | None = None
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not logged and data and not data.startswith((b"GET /_log", b"DELETE /_log")):
                    CONNECTIONS.append(received)
                    logged = True
                received.extend(data)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                target = request.target.decode("latin-1")
                if target == "/_log" and request.method == b"GET":
                    answer = json.dumps([c.decode("latin-1") for c in CONNECTIONS]).encode()
                elif target == "/_log":
                    CONNECTIONS.clear()
                    answer = b"[]"
                else:
                    if "sleep" in target:  # a request held at the app for a while
                        await asyncio.sleep(0.3)
                    answer = json.dumps(
                        {
                            "method": request.method.decode(),
                            "target": target,
                            "headers": [
                                [n.decode("latin-1"), v.decode("latin-1")]
                                for n, v in request.headers
                            ],
                            "body": bytes(body).decode("latin-1"),
                        }
                    ).encode()
                writer.write(_answer(conn, answer, head_only=request.method == b"HEAD"))
                await writer.drain()
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
    except (h11.RemoteProtocolError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
