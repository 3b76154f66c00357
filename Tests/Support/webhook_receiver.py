"""A webhook endpoint for tests: records each request as a JSON line and answers with the status
named by the path (/status/500 answers 500), or 200 with a body of N MiB for /big/N, or 200 with a body of N
bytes sent one every half second for /slow/N; anything else 204. With CERT and KEY it speaks https, and with
CLIENT_CA it also wants a client certificate that authority issued.
Usage: webhook_receiver.py PORT RECORD_FILE [CERT KEY [CLIENT_CA]]"""
import base64
import json
import signal
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, record = int(sys.argv[1]), sys.argv[2]
# A parent may start us with signals blocked; SIGTERM must stop us.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with open(record, "a") as f:
            f.write(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body_base64": base64.b64encode(body).decode()}) + "\n")
        status = 204
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status":
            status = int(parts[1])
        if len(parts) == 2 and parts[0] == "big":
            mib = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(mib << 20))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            for _ in range(mib):
                self.wfile.write(chunk)
            return
        if len(parts) == 2 and parts[0] == "slow":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.flush()
            for _ in range(n):
                time.sleep(0.5)
                self.wfile.write(b"x")
                self.wfile.flush()
            return
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
if len(sys.argv) > 4:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    if len(sys.argv) > 5:
        context.load_verify_locations(sys.argv[5])
        context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
