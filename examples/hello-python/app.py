import json


def handler(event, context):
    """Called once per invocation.

    `petrel invoke NAME --data '{"name": "you"}'` passes the JSON as `event`.
    A request to /fn/NAME/... passes an API-Gateway-v2-style event (method, path, headers, body).
    Return any JSON value; return {"statusCode": ..., "headers": ..., "body": ...} to shape HTTP.
    """
    import os

    body = event.get("body") if isinstance(event, dict) else None
    name = None
    if isinstance(event, dict):
        name = event.get("name") or (event.get("queryStringParameters") or {}).get("name")
    if body and not name:
        try:
            name = json.loads(body).get("name")
        except (ValueError, AttributeError):
            pass
    greeting = os.environ.get("GREETING", "Hello")
    print(f"greeting {name or 'world'} (request {context.aws_request_id})")
    return {"message": f"{greeting}, {name or 'world'}!", "function": context.function_name}
