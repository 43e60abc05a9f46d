# workerd serving the JS hello worker on 127.0.0.1:PORT (bench/run.sh rewrites PORT).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .helloWorker) ],
  sockets = [ ( name = "http", address = "127.0.0.1:PORT", http = (), service = "main" ) ]
);

const helloWorker :Workerd.Worker = (
  modules = [ (name = "worker", esModule = embed "worker.js") ],
  compatibilityDate = "2024-01-01",
);
