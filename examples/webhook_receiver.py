"""A webhook receiver that checks the orchestrator's signature (standard library only).

ORCH_WEBHOOK_SECRET=... python examples/webhook_receiver.py 8001
"""

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["ORCH_WEBHOOK_SECRET"].encode()
seen = set()  # delivery ids handled: one may arrive twice (its first worker died mid-request)


def signed(body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not signed(body, self.headers.get("X-Orchestrator-Signature", "")):
            self.send_response(401)  # not from the orchestrator (or another secret): final, not retried
            self.end_headers()
            return
        event = json.loads(body)
        if event["delivery"] not in seen:
            seen.add(event["delivery"])
            print(f"workflow {event['workflow']} ({event['name']}) is {event['state']}", flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
