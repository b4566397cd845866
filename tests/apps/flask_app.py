"""The image app's routes in Flask / Werkzeug, behind tokengate in the differential test.

Every answer says, in `X-Served: route=…;album=…`, which route and album the app served, so the
test can check it against what the token grants. Method overrides follow Flask's documented
middleware pattern (X-HTTP-Method-Override on POST).
"""
import logging
import sys
from urllib.parse import quote

from flask import Flask, request

app = Flask(__name__)


def served(route, album=None):
    response = app.response_class(f"{route} {album}\n", mimetype="text/plain")
    response.headers["X-Served"] = f"route={route};album={quote(album or '', safe='')}"
    return response


@app.get("/albums/<album>")
def album_page(album):
    return served("album", album)


@app.get("/albums/<album>/images")
def list_images(album):
    return served("list", album)


@app.route("/albums/<album>/images", methods=["POST", "PUT"])
def upload(album):
    return served("upload", album)


@app.delete("/albums/<album>/images/<image>")
def delete(album, image):
    return served("delete", album)


@app.route("/albums/<album>/captions", methods=["PUT", "PATCH"])
def caption(album):
    return served("caption", album)


@app.get("/albums/<album>/fullscreen")
def fullscreen(album):
    return served("fullscreen", album)


@app.post("/api/v1/token")
def legacy_token():
    return served("legacy_token")


class MethodOverride:
    """https://flask.palletsprojects.com/en/stable/patterns/methodoverrides/"""

    allowed = frozenset(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])

    def __init__(self, wsgi):
        self.wsgi = wsgi

    def __call__(self, environ, start_response):
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if environ["REQUEST_METHOD"] == "POST" and method in self.allowed:
            environ["REQUEST_METHOD"] = method
        return self.wsgi(environ, start_response)


app.wsgi_app = MethodOverride(app.wsgi_app)

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
