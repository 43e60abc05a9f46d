// An HTTP function: any server that listens on $PORT. Petrel forwards /fn/NAME/<path> to it
// as /<path>, with the method, headers and body as sent.
const http = require('http');

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const url = new URL(req.url, 'http://localhost');
    let name = url.searchParams.get('name');
    if (!name && chunks.length) {
      try { name = JSON.parse(Buffer.concat(chunks).toString()).name; } catch (_) { /* not JSON */ }
    }
    name = name || 'world';
    const greeting = process.env.GREETING || 'Hello';
    console.log(`${req.method} ${req.url}`);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      message: `${greeting}, ${name}!`,
      method: req.method,
      path: url.pathname,
      bodyBytes: Buffer.concat(chunks).length,
    }));
  });
});
server.listen(Number(process.env.PORT), '127.0.0.1');
