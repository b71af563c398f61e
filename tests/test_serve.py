"""cnnkit.serve's listening socket: bound before the model loads, and its connections send
small writes at once (TCP_NODELAY), without which a kept-alive client waited 40 ms an answer."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cnnkit.errors import CnnkitError
from cnnkit.serve import listen


def test_accepted_connections_send_at_once():
    sock = listen("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connection(reader, writer) -> None:
            option = writer.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            got.set_result(option)
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        value = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_an_address_that_is_not_this_machines_is_a_user_error():
    with pytest.raises(CnnkitError, match="cannot listen on 192.0.2.1:8000") as caught:
        listen("192.0.2.1", 8000)  # TEST-NET-1: never a local address
    assert "--host is an address of this machine" in caught.value.hint
