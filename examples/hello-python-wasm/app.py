"""A Petrel function as a WebAssembly component written in Python (componentize-py), of the
wasi:http/proxy world: it runs on Petrel's wasm runtime, `wasmtime serve` and Spin alike.

Build:  pip install componentize-py==0.25.1 && componentize-py -d wit -w hello componentize app -o hello.wasm
Deploy: petrel deploy .
"""
import json
import os
from urllib.parse import parse_qs

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(64 * 1024))
            except Err:  # the stream is closed: the body is complete
                break
    return b"".join(chunks)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path, _, query = (request.path_with_query() or "/").partition("?")
        name = (parse_qs(query).get("name") or [None])[0]
        if name is None:
            # `petrel invoke NAME --data '{"name": "Ada"}'` POSTs the JSON to /.
            try:
                name = json.loads(read_body(request) or b"{}").get("name")
            except (ValueError, AttributeError):
                name = None
        name = name or "world"
        greeting = os.environ.get("GREETING", "Hello")
        print(f"greeting {name}")
        payload = json.dumps({"message": f"{greeting}, {name}!", "path": path}).encode()

        response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(payload)
        OutgoingBody.finish(body, None)
