// A Petrel function as a WebAssembly component written in JavaScript (componentize-js, on
// StarlingMonkey): the edge-worker model, a `fetch` event handler. It is a component of the
// wasi:http/proxy world, so it runs on Petrel's wasm runtime, `wasmtime serve` and Spin alike.
//
// Build:  npm install && npm run build      (writes hello.wasm)
// Deploy: petrel deploy .
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  let name = url.searchParams.get('name');
  if (!name && request.method === 'POST') {
    // `petrel invoke NAME --data '{"name": "Ada"}'` POSTs the JSON to /.
    try {
      name = (await request.json()).name;
    } catch (_) {
      name = null;
    }
  }
  name = name || 'world';
  console.log(`greeting ${name}`);
  return new Response(JSON.stringify({ message: `Hello, ${name}!`, path: url.pathname }), {
    headers: { 'content-type': 'application/json' },
  });
}
