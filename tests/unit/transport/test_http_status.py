import asyncio
import json

from eventstream.metrics import NodeMetrics
from eventstream.transport.http_status import HttpStatusServer


async def fetch(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_status_metrics_and_errors() -> None:
    metrics = NodeMetrics(1)
    metrics.proposals.inc(3)
    metrics.commits.inc(2)
    metrics.applied_index.set(7)

    async def main() -> None:
        async def status(digest: bool) -> dict[str, object]:
            return {"id": 1, "role": "leader", "digest": digest}

        server = HttpStatusServer(status, metrics.render)
        _, port = await server.start("127.0.0.1", 0)
        try:
            code, body = await fetch(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert code == 200 and json.loads(body) == {"id": 1, "role": "leader", "digest": False}
            for query, asked in ((b"?digest=1", True), (b"?digest=true", True), (b"?digest=0", False), (b"?", False)):
                code, body = await fetch(port, b"GET /status" + query + b" HTTP/1.1\r\n\r\n")
                assert code == 200 and json.loads(body)["digest"] is asked, query
            for query in (b"?digest=yes", b"?verbose=1", b"?digest=1&x=2"):
                code, body = await fetch(port, b"GET /status" + query + b" HTTP/1.1\r\n\r\n")
                assert code == 400 and body.strip(), query
            code, body = await fetch(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert code == 200 and b"esc_proposals_total 3.0" in body and b"esc_process_rss_bytes" in body
            assert b"\nesc_commits_total 2.0\n" in body and b"\nesc_applied_index 7.0\n" in body
            assert b"# TYPE esc_commits_total counter" in body and b"# TYPE esc_applied_index gauge" in body
            assert (await fetch(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await fetch(port, b"POST /status HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await fetch(port, b"garbage\r\n\r\n"))[0] == 400
        finally:
            await server.stop()

    asyncio.run(main())


def test_http_allow_admits_its_networks_and_admin_tokens_only() -> None:
    import ipaddress

    async def main() -> None:
        async def status(digest: bool) -> dict[str, object]:
            return {"id": 1}

        def server_for(networks: str) -> HttpStatusServer:
            return HttpStatusServer(status, NodeMetrics(1).render, lambda token: True,
                                    [ipaddress.ip_network(n) for n in networks.split(",")],
                                    is_admin=lambda token: token == "esc_admin")

        outside, inside = server_for("10.9.0.0/16"), server_for("10.9.0.0/16,127.0.0.0/8")
        _, out_port = await outside.start("127.0.0.1", 0)
        _, in_port = await inside.start("127.0.0.1", 0)
        try:
            for path in (b"/status", b"/metrics"):
                code, body = await fetch(out_port, b"GET " + path + b" HTTP/1.1\r\n\r\n")
                assert code == 403 and b"http_allow" in body
                code, _ = await fetch(out_port, b"GET " + path + b" HTTP/1.1\r\nAuthorization: Bearer esc_other\r\n\r\n")
                assert code == 403
                code, _ = await fetch(out_port, b"GET " + path + b" HTTP/1.1\r\nAuthorization: Bearer esc_admin\r\n\r\n")
                assert code == 200
                assert (await fetch(in_port, b"GET " + path + b" HTTP/1.1\r\n\r\n"))[0] == 200
        finally:
            await outside.stop()
            await inside.stop()

    asyncio.run(main())
