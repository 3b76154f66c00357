"""An SMTP server for the e-mail sink's tests, on aiosmtpd: STARTTLS required, AUTH PLAIN and LOGIN
with one user, each mail appended to a JSON-lines file; RCPT TO nobody@... is refused with 550, and
RCPT TO later@... is greylisted: refused with 451 every other time, starting with the first.

    smtp_receiver.py PORT CERT KEY OUT USER PASSWORD
"""
import json
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Keep:
    def __init__(self, out):
        self.out = out
        self.greylisted = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # A permanent refusal to test senders with: nobody@... has no mailbox.
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        # A transient refusal (greylisting): the sender must try again later.
        if address.startswith("later@"):
            self.greylisted += 1
            if self.greylisted % 2 == 1:
                return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with open(self.out, "a") as f:
            f.write(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                "data": envelope.content.decode("utf-8", "replace"),
                                "tls": session.ssl is not None, "user": getattr(session, "iotc_user", None)}) + "\n")
        return "250 OK"


def main():
    port, cert, key, out, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        if ok:
            session.iotc_user = user
        return AuthResult(success=ok)

    controller = Controller(Keep(out), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=authenticate, auth_required=True, auth_require_tls=True)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
