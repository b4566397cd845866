"""An HTTP/2 (prior knowledge) upstream for tests/gateway.rs that ends every response the way
many HTTP/2 servers do: HEADERS without a length, one DATA frame, then an empty DATA frame with
END_STREAM. It prints its port, then serves until killed.

Each response's body is the request's `:path`, so a client can tell the answers apart.
"""

import socket
import threading

import h2.config
import h2.connection
import h2.events


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    paths = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                paths[event.stream_id] = dict(event.headers)[b":path"]
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream = event.stream_id
                conn.send_headers(stream, [(":status", "200"), ("content-type", "text/plain")])
                conn.send_data(stream, paths.pop(stream, b"?"))
                conn.end_stream(stream)
        sock.sendall(conn.data_to_send())


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
