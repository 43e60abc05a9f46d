// The same hello answer as the other targets, as a Cloudflare-style ES-module worker.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    return new Response(JSON.stringify({ message: 'Hello, world!', path: url.pathname }), {
      headers: { 'content-type': 'application/json' },
    });
  },
};
