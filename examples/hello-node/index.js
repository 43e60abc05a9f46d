// Called once per invocation.
// `petrel invoke NAME --data '{"name": "you"}'` passes the JSON as `event`.
// A request to /fn/NAME/... passes an API-Gateway-v2-style event (method, path, headers, body).
// Return any JSON value; return {statusCode, headers, body} to shape the HTTP answer.
exports.handler = async (event, context) => {
  let name = event && (event.name || (event.queryStringParameters || {}).name);
  if (!name && event && event.body) {
    try { name = JSON.parse(event.body).name; } catch (_) { /* not JSON */ }
  }
  const greeting = process.env.GREETING || 'Hello';
  console.log(`greeting ${name || 'world'} (request ${context.awsRequestId})`);
  return { message: `${greeting}, ${name || 'world'}!`, function: context.functionName };
};
