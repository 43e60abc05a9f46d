-- wrk: a JSON event POSTed, the way the Lambda Runtime Interface Emulator is called.
wrk.method = "POST"
wrk.body = '{"name":"you"}'
wrk.headers["Content-Type"] = "application/json"
