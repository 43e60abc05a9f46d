// The hello answer without a content-length: Node sends it chunked, as every streamed answer.
const http = require('http');
http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('Hello, chunked!\n');
}).listen(Number(process.env.PORT), '127.0.0.1');
