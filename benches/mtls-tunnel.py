#!/usr/bin/env python3
"""A plain-TCP to mutual-TLS tunnel for benches/paho-interop.sh.

certmq has no plaintext port, and the Eclipse Paho interoperability suite
speaks plain MQTT. This listens on 127.0.0.1 (a port the kernel picks,
printed on stdout) and, for each connection, opens a mutual-TLS connection
to the broker with one device certificate and copies bytes both ways. When
one side stops sending, the other is half-closed, as a TCP peer would see
it, so that a packet the broker sent before closing (a DISCONNECT with its
reason code) still reaches the client.

    mtls-tunnel.py HOST PORT CA_PEM CERT_PEM KEY_PEM
"""
import socket, ssl, sys, threading

target_host, target_port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
ctx.load_cert_chain(cert, key)

def pump(src, dst):
    """Copies until src ends, then half-closes dst (as a TCP peer would)."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def serve(plain):
    try:
        raw = socket.create_connection((target_host, target_port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
    except OSError as e:
        print(f"tunnel: cannot reach the broker: {e}", file=sys.stderr)
        plain.close()
        return
    up = threading.Thread(target=pump, args=(plain, tls), daemon=True)
    up.start()
    pump(tls, plain)
    up.join()
    plain.close()
    tls.close()

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
