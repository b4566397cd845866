"""A real gRPC server and client (grpcio) for tests/gateway.rs, without generated code: messages
are raw bytes, which is all a proxy may look at anyway.

  grpc_peer.py server [CERT KEY]   serve on a free 127.0.0.1 port (TLS with CERT KEY), print it
  grpc_peer.py client TARGET [TOKEN] call through TARGET (plaintext, HTTP/2 prior knowledge) and
                                   print one JSON line per call

Service test.Echo: Say (unary: echoes the bytes reversed, and the `x-echo` metadata as initial
metadata), Count (server streaming: `n` messages), Fail (aborts with PERMISSION_DENIED, a
message and trailing metadata). test.Secure/Say is the same as Say behind a required route.
"""

import json
import sys
from concurrent import futures

import grpc


def say(request, context):
    echo = dict(context.invocation_metadata()).get("x-echo", "")
    context.send_initial_metadata((("x-echo", echo),))
    context.set_trailing_metadata((("x-done", "yes"),))
    return request[::-1]


def count(request, context):
    for i in range(int(request.decode())):
        yield f"message {i}".encode()


def fail(request, context):
    context.set_trailing_metadata((("x-detail", "album 42 is private"),))
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")


def serve(args):
    handlers = [
        grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Say": grpc.unary_unary_rpc_method_handler(say),
                "Count": grpc.unary_stream_rpc_method_handler(count),
                "Fail": grpc.unary_unary_rpc_method_handler(fail),
            },
        ),
        grpc.method_handlers_generic_handler(
            "test.Secure", {"Say": grpc.unary_unary_rpc_method_handler(say)}
        ),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=handlers)
    if args:
        with open(args[0], "rb") as c, open(args[1], "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def outcome(call):
    """The status, details and metadata of a finished call, or of its error."""
    return {
        "code": call.code().name,
        "details": call.details(),
        "initial": dict(call.initial_metadata() or ()),
        "trailing": dict(call.trailing_metadata() or ()),
    }


def client(target, token):
    auth = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        results = {}
        unary = channel.unary_unary("/test.Echo/Say")
        reply, call = unary.with_call(b"gateway", metadata=(("x-echo", "hello"),), timeout=10)
        results["say"] = {"reply": reply.decode(), **outcome(call)}
        stream = channel.unary_stream("/test.Echo/Count")(b"5", timeout=10)
        results["count"] = {"replies": [m.decode() for m in stream], **outcome(stream)}
        try:
            channel.unary_unary("/test.Echo/Fail")(b"", timeout=10)
            results["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            results["fail"] = outcome(e)
        secure = channel.unary_unary("/test.Secure/Say")
        for name, metadata in (("secure_without", ()), ("secure_with", auth)):
            try:
                reply = secure(b"abc", metadata=metadata, timeout=10)
                results[name] = {"code": "OK", "reply": reply.decode()}
            except grpc.RpcError as e:
                results[name] = outcome(e)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2:])
    else:
        client(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
