"""Delivery adapters: the webhook retries transient failures with the same idempotency key
(the provider delivers once), maps 410 to a fallback and a 4xx to a loud failure; the JSONL
provider drops a torn last line and never writes a message twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from src.campaigns.adapters import JsonlAdapter, WebhookAdapter


class Provider(BaseHTTPRequestHandler):
    fail_first = 2
    calls: list[str] = []
    delivered: dict[str, dict] = {}

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        key = self.headers["Idempotency-Key"]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Provider.calls.append(key)
        if body.get("channel") == "messenger":
            self.send_response(410)
        elif body.get("bad"):
            self.send_response(400)
        elif Provider.calls.count(key) <= Provider.fail_first:
            self.send_response(503)
        else:
            Provider.delivered.setdefault(key, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id": f"p-{key}"}).encode())
            return
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    Provider.calls, Provider.delivered = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/send"
    server.shutdown()


def test_webhook_retries_with_one_idempotency_key(provider: str) -> None:
    waits: list[float] = []
    hook = WebhookAdapter(provider, retries=3, backoff_s=0.1, sleep=waits.append)
    ack = hook.send({"message_id": "m1", "channel": "push"})
    assert ack.status == "accepted" and ack.provider_id == "p-m1"
    assert Provider.calls == ["m1", "m1", "m1"] and waits == [0.1, 0.2]
    assert hook.send({"message_id": "m1", "channel": "push"}).status == "accepted"
    assert list(Provider.delivered) == ["m1"]  # resent after a crash: delivered once
    assert hook.send({"message_id": "m2", "channel": "messenger"}).status == "undeliverable"
    with pytest.raises(RuntimeError, match="m3 refused with HTTP 400"):
        hook.send({"message_id": "m3", "bad": True})
    with pytest.raises(RuntimeError, match="not acknowledged after 2 tries"):
        WebhookAdapter(provider, retries=1, sleep=lambda s: None).send({"message_id": "m4"})


def test_jsonl_drops_a_torn_line_and_dedups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    a = JsonlAdapter(path)
    a.send({"message_id": "x"})
    a.close()
    with open(path, "a") as f:
        f.write('{"idempotency_key": "y", "mess')  # killed mid-write
    b = JsonlAdapter(path)
    assert b.seen == {"x"}
    b.send({"message_id": "x"})
    b.send({"message_id": "y"})
    b.close()
    keys = [json.loads(line)["idempotency_key"] for line in path.read_text().splitlines()]
    assert keys == ["x", "y"]
