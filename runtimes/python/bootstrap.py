"""Petrel's Python runtime shim: runs a Lambda-style handler `def handler(event, context)` by
speaking the AWS Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API, as AWS's own runtime does.

Shipped inside the petrel binary; started once per instance with the function's code in
$LAMBDA_TASK_ROOT and the handler in $_HANDLER (module.function). $PETREL_CONCURRENCY workers
poll for invocations, so an instance may run several at once when the function allows it.
"""
import importlib
import json
import os
import socket
import sys
import threading
import time
import traceback

# Set from the environment when the instance starts (at once, or in a child of the fork server).
HOST, PORT = "", ""
BASE = "/2018-06-01/runtime"


class _RuntimeApi:
    """A keep-alive HTTP/1.1 connection to the Runtime API, opened again after a failure.

    Petrel's Runtime API answers every request with a content-length, and the shim needs only the
    status, the headers and the body, so they are read straight off a buffered socket:
    http.client's header parsing (through the email package) cost more than the rest of a hello
    invocation."""

    def __init__(self):
        self.sock = self.rfile = None

    def _close(self):
        if self.sock is not None:
            try:
                self.rfile.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = self.rfile = None

    def _roundtrip(self, method, path, body, headers):
        if self.sock is None:
            self.sock = socket.create_connection((HOST, int(PORT)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.rfile = self.sock.makefile("rb")
        head = ["%s %s HTTP/1.1\r\nHost: %s:%s\r\n" % (method, path, HOST, PORT)]
        head.extend("%s: %s\r\n" % kv for kv in (headers or {}).items())
        if body is not None:
            head.append("Content-Length: %d\r\n" % len(body))
        head.append("\r\n")
        self.sock.sendall("".join(head).encode("latin-1") + (body or b""))
        line = self.rfile.readline(65537)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise OSError("the Runtime API answered %r" % line[:80])
        hdrs = {}
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" not in hdrs:
            raise OSError("the Runtime API answered without a content-length")
        n = int(hdrs["content-length"])
        payload = self.rfile.read(n) if n else b""
        if len(payload) != n:
            raise OSError("the Runtime API closed the connection mid-answer")
        if hdrs.get("connection", "").lower() == "close":
            self._close()
        return int(parts[1]), hdrs, payload

    def request(self, method, path, body=None, headers=None):
        """Returns (status, headers with lower-case names, body). After a failure a GET is sent
        once more on a new connection; a POST answers (None, {}, b"")."""
        try:
            return self._roundtrip(method, path, body, headers)
        except (OSError, ValueError):
            # Petrel may refuse a body (a response over the limit) and close the connection.
            self._close()
            if method == "GET":
                return self._roundtrip(method, path, body, headers)
            return None, {}, b""


def _error_body(exc, error_type=None):
    # Lambda's shape: the frames of the user's code, without the runtime's own.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(frames)],
        "requestId": "",
    }


def _report_init_error(exc, error_type):
    body = _error_body(exc, error_type)
    sys.stderr.write("init error: %s: %s\n" % (body["errorType"], body["errorMessage"]))
    sys.stderr.flush()
    try:
        _RuntimeApi().request("POST", BASE + "/init/error", json.dumps(body).encode(),
                              {"Content-Type": "application/json",
                               "Lambda-Runtime-Function-Error-Type": body["errorType"]})
    finally:
        sys.exit(1)


def _load_handler():
    spec = os.environ.get("_HANDLER", "")
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        _report_init_error(ValueError("handler %r is not module.function" % spec), "Runtime.MalformedHandlerName")
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    sys.path.insert(0, task_root)
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ModuleNotFoundError as exc:
        _report_init_error(exc, "Runtime.ImportModuleError")
    except SyntaxError as exc:
        _report_init_error(exc, "Runtime.UserCodeSyntaxError")
    except Exception as exc:  # an exception raised by the module's own top-level code
        _report_init_error(exc, "Runtime.ImportModuleError")
    handler = getattr(module, func_name, None)
    if handler is None or not callable(handler):
        _report_init_error(AttributeError("module %r has no function %r" % (module_name, func_name)),
                           "Runtime.HandlerNotFound")
    return handler


class Context:
    """The Lambda context object."""

    def __init__(self, headers):
        # headers: the `next` answer's, with lower-case names
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms", "0"))
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        cc = headers.get("lambda-runtime-client-context")
        if cc:
            try:
                self.client_context = json.loads(cc)
            except ValueError:
                pass
        ci = headers.get("lambda-runtime-cognito-identity")
        if ci:
            try:
                self.identity = json.loads(ci)
            except ValueError:
                pass

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _worker(handler):
    conn = _RuntimeApi()
    while True:
        _status, headers, data = conn.request("GET", BASE + "/invocation/next")
        request_id = headers.get("lambda-runtime-aws-request-id")
        trace_id = headers.get("lambda-runtime-trace-id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        ctx = Context(headers)
        try:
            event = json.loads(data) if data else None
            result = handler(event, ctx)
            try:
                payload = json.dumps(result).encode()
            except (TypeError, ValueError) as exc:
                raise _MarshalError(exc)
            conn.request("POST", "%s/invocation/%s/response" % (BASE, request_id), payload,
                     {"Content-Type": "application/json"})
        except Exception as exc:  # the handler raised: report it as the function's error
            error_type = "Runtime.MarshalError" if isinstance(exc, _MarshalError) else None
            body = _error_body(exc.cause if isinstance(exc, _MarshalError) else exc, error_type)
            body["requestId"] = request_id
            sys.stderr.write("[ERROR] %s: %s\n" % (body["errorType"], body["errorMessage"]))
            sys.stderr.flush()
            conn.request("POST", "%s/invocation/%s/error" % (BASE, request_id), json.dumps(body).encode(),
                     {"Content-Type": "application/json",
                      "Lambda-Runtime-Function-Error-Type": body["errorType"]})


class _MarshalError(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


def main():
    global HOST, PORT
    HOST, _, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].partition(":")
    handler = _load_handler()
    workers = max(1, int(os.environ.get("PETREL_CONCURRENCY", "1")))
    threads = [threading.Thread(target=_worker, args=(handler,), daemon=True) for _ in range(workers - 1)]
    for t in threads:
        t.start()
    _worker(handler)


# The fork server (`bootstrap.py --zygote`, after SOCK, ATC'18): one process per Petrel server
# with the interpreter, this shim and the standard library modules handlers commonly import
# already loaded. Petrel sends it, over the SOCK_SEQPACKET socket on its stdin, one message per
# instance: JSON {"id", "env", "cwd"} with the instance's stdout and stderr pipes attached. It
# forks; the child takes the pipes, the environment and the directory, leads a process group of
# its own and runs main(). The server answers {"id", "pid"} (or {"id", "error"}) and reports every
# child's end as {"exit": pid, "code"} or {"exit": pid, "signal"}.
PRELOAD = (
    "base64", "collections", "copy", "csv", "dataclasses", "datetime", "decimal", "enum",
    "functools", "gzip", "hashlib", "hmac", "io", "itertools", "logging", "math", "random", "re",
    "string", "struct", "tempfile", "textwrap", "typing", "urllib.parse", "urllib.request", "uuid",
    "zlib", "ssl", "email.utils", "concurrent.futures", "asyncio",
    # http.client encodes the host name with the idna codec, which loads these on first use.
    "encodings.idna", "stringprep", "unicodedata",
)


def _become(msg):
    # Turns a generic process (a fork server's child, a standby) into the instance Petrel
    # described: its environment, directory and import paths, as a fresh start would have them.
    sys.argv = [__file__]
    os.environ.clear()
    os.environ.update(msg["env"])
    # Its environment block is still the fork server's; its name tells `ps` which instance it is.
    instance = msg["env"].get("PETREL_INSTANCE_ID")
    if instance:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(15, instance.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass
    os.chdir(msg["cwd"])
    _unshadow(msg["env"].get("LAMBDA_TASK_ROOT", msg["cwd"]))
    # As a fresh interpreter with this environment would have them (a sandboxed instance has no
    # shared bytecode cache, and writes none).
    sys.pycache_prefix = msg["env"].get("PYTHONPYCACHEPREFIX") or None
    sys.dont_write_bytecode = bool(msg["env"].get("PYTHONDONTWRITEBYTECODE"))
    extra = msg["env"].get("PYTHONPATH")
    if extra:
        sys.path[1:1] = [p for p in extra.split(os.pathsep) if p]


def _preload():
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a module this Python lacks is simply not preloaded
            pass
    # http.client encodes the host name with the idna codec: load it now, not in each instance.
    "localhost".encode("idna")


def _unshadow(task_root):
    # A function's own module named like a preloaded one (its uuid.py, its "logging" package)
    # must win, as it would in a fresh interpreter: forget the preloaded one.
    try:
        names = {os.path.splitext(e)[0] for e in os.listdir(task_root)}
    except OSError:
        return
    shadowed = names & {n.partition(".")[0] for n in PRELOAD}
    for mod in list(sys.modules):
        if mod.partition(".")[0] in shadowed:
            del sys.modules[mod]


def _sandbox_lib():
    # Petrel's sandbox as a C library (its petrel-sandbox crate, built for this): the one
    # implementation of the confinement, which the fork server's children carry out on
    # themselves. Petrel names it when the sandbox is on.
    path = os.environ.get("PETREL_SANDBOX_LIB")
    if not path:
        return None
    import ctypes

    lib = ctypes.CDLL(path, use_errno=True)
    lib.petrel_sandbox_enter.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                         ctypes.c_char_p, ctypes.c_size_t)
    lib.petrel_sandbox_rejoin_pid_namespace.argtypes = (ctypes.c_int,)
    return lib


def _confine(lib, plan, netfd):
    # The sandbox, entered by a fork server's child before any function code runs: the plan
    # Petrel made (hex of its wire form), carried out by the same code Petrel runs between fork
    # and exec. The fork server made this process PID 1 of a new PID namespace.
    import ctypes

    if lib is None:
        raise OSError(0, "sandbox: the fork server has no sandbox library")
    plan = bytes.fromhex(plan)
    err = ctypes.create_string_buffer(1024)
    fd = -1 if netfd is None else netfd
    if lib.petrel_sandbox_enter(plan, len(plan), fd, err, len(err)) != 0:
        raise OSError(0, "sandbox: " + err.value.decode(errors="replace"))


def _zygote():
    import selectors
    import signal
    import socket

    _preload()
    import gc
    gc.freeze()  # what is loaded now stays shared with every child, not copied on first GC
    ctl = socket.socket(fileno=0)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: go when Petrel goes
    except Exception:
        libc = None
    sandbox = _sandbox_lib()
    # The fork server's own PID namespace, to come back to after forking a sandboxed child into a
    # new one.
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "chld")

    def send(msg):
        ctl.sendall(json.dumps(msg).encode())

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if os.WIFSIGNALED(status):
                send({"exit": pid, "signal": os.WTERMSIG(status)})
            else:
                send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    while True:
        for key, _ in sel.select():
            if key.data == "chld":
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                reap()
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 20, 4)
            except OSError:
                os._exit(0)
            if not data:
                os._exit(0)  # Petrel closed the socket
            msg = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                if msg.get("sandbox"):
                    # The child becomes PID 1 of a PID namespace of its own.
                    if sandbox is None or sandbox.petrel_sandbox_children_in_new_pid_namespace() < 0:
                        raise OSError(ctypes.get_errno() if sandbox else 0, "cannot make a PID namespace")
                try:
                    pid = os.fork()
                finally:
                    if msg.get("sandbox") and sandbox is not None:
                        sandbox.petrel_sandbox_rejoin_pid_namespace(own_pidns)
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                send({"id": msg["id"], "error": str(exc)})
                continue
            if pid == 0:
                try:
                    # Into the instance's cgroups before anything else runs.
                    for procs in msg.get("cgroup_procs") or ():
                        with open(procs, "w") as f:
                            f.write("0")
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    sel.close()
                    ctl.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    os.close(own_pidns)
                    os.setpgid(0, 0)
                    if libc is not None:
                        libc.prctl(1, 9)
                    # The descriptors, in the order msg["fds"] names them: stdout, stderr, then the
                    # instance's network and a standby's spec pipe, when sent.
                    named = dict(zip(msg.get("fds") or ("stdout", "stderr"), fds))
                    os.dup2(named["stdout"], 1)
                    os.dup2(named["stderr"], 2)
                    os.close(named["stdout"])
                    os.close(named["stderr"])
                    if msg.get("sandbox"):
                        _confine(sandbox, msg["sandbox"], named.get("net"))
                    if "spec" in named:
                        # A standby child: it waits in its sandbox for its function, sent as one
                        # line of JSON once its code is mounted at /var/task.
                        with os.fdopen(named["spec"], "rb", buffering=0) as f:
                            line = f.readline()
                        if not line:
                            os._exit(0)  # Petrel let the standby go
                        msg = json.loads(line)
                    _become(msg)
                    main()
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                    os._exit(1)
                os._exit(0)
            for fd in fds:
                os.close(fd)
            send({"id": msg["id"], "pid": pid})


def _standby():
    # A generic runtime process started before any function needs it (used when the fork
    # server is off): the shim and common modules loaded, it reads one line of JSON from stdin,
    # {"env": {...}, "cwd": "..."}, becomes that instance and carries on as if started with them.
    _preload()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)  # Petrel let the standby go
    _become(json.loads(line))
    main()


if __name__ == "__main__":
    if "--zygote" in sys.argv:
        _zygote()
    elif "--standby" in sys.argv:
        _standby()
    else:
        main()
