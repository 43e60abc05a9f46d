package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.HashMap;
import java.util.Map;

/**
 * Called once per invocation. `petrel invoke NAME --data '{"name": "you"}'` passes the JSON as
 * `event`; a request to /fn/NAME/... passes an API-Gateway-v2-style event (its query string in
 * queryStringParameters). Return any JSON value; return a map with statusCode, headers and body
 * to shape the HTTP answer.
 */
public class Hello implements RequestHandler<Map<String, Object>, Map<String, Object>> {
    @Override
    public Map<String, Object> handleRequest(Map<String, Object> event, Context context) {
        Object name = event == null ? null : event.get("name");
        if (name == null && event != null && event.get("queryStringParameters") instanceof Map) {
            name = ((Map<?, ?>) event.get("queryStringParameters")).get("name");
        }
        if (name == null) {
            name = "world";
        }
        String greeting = System.getenv().getOrDefault("GREETING", "Hello");
        context.getLogger().log("greeting " + name + " (request " + context.getAwsRequestId() + ")");
        Map<String, Object> out = new HashMap<>();
        out.put("message", greeting + ", " + name + "!");
        out.put("function", context.getFunctionName());
        return out;
    }
}
