"""A raw HTTP/2 client for the tests: sends requests exactly as described, hostile ones included.

Usage: h2_client.py HOST PORT [--tls] [--multiplex]. Reads one JSON request a line on stdin and
writes one JSON answer a line on stdout, in order, each request on a new connection (h2c with
prior knowledge, or TLS with ALPN h2 and no certificate check); with --multiplex, every request is
a stream of one connection, all sent at once (bodies with their length). A request:

  {"method": "POST", "path": "/x", "authority": "h" or null,
   "headers": [["name", "value"], ...], "body": "<base64>" or null,
   "framing": "length" | "stream" | "bytes" | "none"}

`length` sends a content-length and the body in one DATA frame; `stream` the body in one DATA
frame without a length; `bytes` one DATA frame per byte without a length; `none` HEADERS with
END_STREAM (a body, if given, is not sent). Headers go exactly as given: no validation, no
normalization, names in the case given. An answer:

  {"status": 200 or null, "headers": [[name, value], ...], "body": "<text>",
   "reset": null or the RST_STREAM / GOAWAY error code, "error": null or what went wrong}
"""

import base64
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TIMEOUT = 10


def connect(host, port, tls):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    if not tls:
        return sock
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    wrapped = context.wrap_socket(sock, server_hostname="localhost")
    if wrapped.selected_alpn_protocol() != "h2":
        raise RuntimeError("ALPN did not pick h2")
    return wrapped


def exchange(host, port, tls, request):
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    sock = connect(host, port, tls)
    answer = {"status": None, "headers": [], "body": "", "reset": None, "error": None}
    body = bytearray()
    try:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        stream = conn.get_next_available_stream_id()
        data = base64.b64decode(request["body"]) if request.get("body") else b""
        framing = request.get("framing", "none")
        headers = [(":method", request["method"]), (":scheme", "https" if tls else "http")]
        if request.get("authority") is not None:
            headers.append((":authority", request["authority"]))
        headers.append((":path", request["path"]))
        headers += [(k, v) for k, v in request.get("headers", [])]
        if framing == "length":
            headers.append(("content-length", str(len(data))))
        conn.send_headers(stream, headers, end_stream=framing == "none")
        sock.sendall(conn.data_to_send())
        state = {"done": False}

        def handle(events):
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == ":status":
                            status = int(value)
                            # An informational answer (100 Continue) precedes the final one.
                            if status >= 200:
                                answer["status"] = status
                        else:
                            answer["headers"].append([name, value])
                elif isinstance(event, h2.events.DataReceived):
                    body.extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    state["done"] = True
                elif isinstance(event, h2.events.StreamReset):
                    answer["reset"] = int(event.error_code)
                    state["done"] = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer["reset"] = answer["reset"] or int(event.error_code)
                    state["done"] = True

        if framing != "none":
            pieces = [data[i:i + 1] for i in range(len(data))] if framing == "bytes" else [data]
            try:
                for piece in pieces:
                    # Within the flow-control window: wait for the server to open it, and
                    # stop once it has answered.
                    while piece and not state["done"]:
                        room = min(conn.local_flow_control_window(stream),
                                   conn.max_outbound_frame_size)
                        if room == 0:
                            chunk = sock.recv(65536)
                            if not chunk:
                                raise OSError("connection closed")
                            handle(conn.receive_data(chunk))
                            sock.sendall(conn.data_to_send())
                            continue
                        conn.send_data(stream, piece[:room])
                        sock.sendall(conn.data_to_send())
                        piece = piece[room:]
                    if state["done"]:
                        break
                if not state["done"]:
                    conn.end_stream(stream)
                    sock.sendall(conn.data_to_send())
            except (OSError, h2.exceptions.StreamClosedError) as e:
                # The server answered (or reset the stream) before the body was all sent:
                # what it said is read below.
                answer["error"] = f"sending the body: {type(e).__name__}"
        send_failed = answer["error"] is not None
        while not state["done"]:
            try:
                chunk = sock.recv(65536)
            except OSError as e:
                answer["error"] = answer["error"] or f"{type(e).__name__}: {e}"
                break
            if not chunk:
                answer["error"] = answer["error"] or "connection closed"
                break
            handle(conn.receive_data(chunk))
            pending = conn.data_to_send()
            if pending and not send_failed:
                try:
                    sock.sendall(pending)
                except OSError:
                    # The server stopped reading (it answered early and closed): keep reading.
                    send_failed = True
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test, not raised
        answer["error"] = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    answer["body"] = body.decode("utf-8", "replace")
    return answer


def multiplex(host, port, tls, requests):
    """Every request as a stream of one connection, all sent before any answer is read."""
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    sock = connect(host, port, tls)
    conn.initiate_connection()
    streams = {}
    for i, request in enumerate(requests):
        stream = conn.get_next_available_stream_id()
        streams[stream] = {"status": None, "headers": [], "body": b"", "reset": None, "error": None}
        data = base64.b64decode(request["body"]) if request.get("body") else b""
        headers = [(":method", request["method"]), (":scheme", "https" if tls else "http"),
                   (":authority", request.get("authority") or "localhost"), (":path", request["path"])]
        headers += [(k, v) for k, v in request.get("headers", [])]
        if data:
            headers.append(("content-length", str(len(data))))
        conn.send_headers(stream, headers, end_stream=not data)
        if data:
            conn.send_data(stream, data, end_stream=True)
    sock.sendall(conn.data_to_send())
    open_streams = set(streams)
    while open_streams:
        chunk = sock.recv(65536)
        if not chunk:
            for stream in open_streams:
                streams[stream]["error"] = "connection closed"
            break
        for event in conn.receive_data(chunk):
            answer = streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                answer["status"] = int(dict(event.headers)[":status"])
                answer["headers"] = [[k, v] for k, v in event.headers if not k.startswith(":")]
            elif isinstance(event, h2.events.DataReceived):
                answer["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                open_streams.discard(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                answer["reset"] = int(event.error_code)
                open_streams.discard(event.stream_id)
        sock.sendall(conn.data_to_send())
    sock.close()
    out = []
    for stream in sorted(streams):
        answer = streams[stream]
        answer["body"] = answer["body"].decode("utf-8", "replace")
        out.append(answer)
    return out


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    tls = "--tls" in sys.argv[3:]
    lines = (json.loads(line) for line in sys.stdin if line.strip())
    if "--multiplex" in sys.argv[3:]:
        answers = multiplex(host, port, tls, list(lines))
    else:
        answers = (exchange(host, port, tls, request) for request in lines)
    for answer in answers:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
