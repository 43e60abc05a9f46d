import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.InputStream;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Enumeration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;

/**
 * Petrel's launcher for the `java` runtime. The function itself is run by the official AWS
 * Lambda runtime interface client (its `AWSLambda` main class); this class only gets a JVM
 * ready before the function is known:
 *
 * <ul>
 *   <li>{@code --standby}: load the runtime client's classes (without running their static
 *       initialisers, several of which read the environment), load its JNI library, initialise
 *       the serialisation library, then wait on stdin for the instance's environment
 *       ({@code KEY=VALUE} entries separated by NUL bytes, until end of input). The
 *       environment becomes the process's own (what {@code System.getenv} answers and what child
 *       processes inherit), and the runtime client starts with the handler in {@code _HANDLER}.
 *   <li>{@code --archive}: load the same classes and exit, so that a JVM started with
 *       {@code -XX:ArchiveClassesAtExit} writes them into a class data sharing archive.
 * </ul>
 */
public final class PetrelJava {
    private static final String MAIN = "com.amazonaws.services.lambda.runtime.api.client.AWSLambda";
    private static final String JNI_HELPER =
            "com.amazonaws.services.lambda.runtime.api.client.runtimeapi.JniHelper";
    /** Packages whose classes are initialised ahead: they read nothing of the environment. */
    private static final String[] INITIALISE = {
        "com/amazonaws/lambda/thirdparty/", "com/amazonaws/services/lambda/runtime/serialization/"
    };

    private PetrelJava() {}

    public static void main(String[] args) throws Throwable {
        String mode = args.length > 0 ? args[0] : "";
        switch (mode) {
            case "--standby":
                preload(true);
                Map<String, String> env = readEnvironment(System.in);
                become(env);
                runClient(env.get("_HANDLER"));
                break;
            case "--archive":
                preload(false);
                break;
            default:
                System.err.println("usage: PetrelJava --standby | --archive");
                System.exit(2);
        }
    }

    /** Loads every class of the runtime client's jars; initialises the environment-free ones. */
    private static void preload(boolean loadJni) {
        ClassLoader loader = PetrelJava.class.getClassLoader();
        int loaded = 0;
        for (String entry : System.getProperty("java.class.path").split(File.pathSeparator)) {
            if (!entry.endsWith(".jar")) {
                continue;
            }
            try (JarFile jar = new JarFile(entry)) {
                Enumeration<JarEntry> entries = jar.entries();
                while (entries.hasMoreElements()) {
                    String name = entries.nextElement().getName();
                    if (!name.endsWith(".class") || name.contains("-") || name.startsWith("META-INF/")) {
                        continue;
                    }
                    boolean init = false;
                    for (String p : INITIALISE) {
                        init |= name.startsWith(p);
                    }
                    String cls = name.substring(0, name.length() - 6).replace('/', '.');
                    try {
                        Class.forName(cls, init, loader);
                        loaded++;
                    } catch (Throwable ignored) {
                        // Optional dependencies of the serialisation library (Joda, say) are absent.
                    }
                }
            } catch (Exception e) {
                System.err.println("petrel: could not read " + entry + ": " + e);
            }
        }
        if (loadJni) {
            try {
                Class.forName(JNI_HELPER, true, loader).getMethod("load").invoke(null);
            } catch (Throwable e) {
                // The runtime client loads it itself, and reports what fails.
            }
        }
        if (loaded == 0) {
            System.err.println("petrel: no runtime client classes on the class path");
        }
    }

    /** The instance's environment: NUL-separated KEY=VALUE entries until the end of input. */
    static Map<String, String> readEnvironment(InputStream in) throws Exception {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        for (int n; (n = in.read(chunk)) > 0; ) {
            buf.write(chunk, 0, n);
        }
        Map<String, String> env = new LinkedHashMap<>();
        for (String kv : buf.toString(StandardCharsets.UTF_8).split("\0")) {
            int eq = kv.indexOf('=');
            if (eq > 0) {
                env.put(kv.substring(0, eq), kv.substring(eq + 1));
            }
        }
        if (env.isEmpty()) {
            // The node closed the pipe without handing over a function: nothing to run.
            System.exit(0);
        }
        return env;
    }

    /** Makes `env` this process's environment, as if it had started with it. */
    @SuppressWarnings("unchecked")
    private static void become(Map<String, String> env) throws Exception {
        Class<?> pe = Class.forName("java.lang.ProcessEnvironment");
        Field unmodifiable = pe.getDeclaredField("theUnmodifiableEnvironment");
        unmodifiable.setAccessible(true);
        Object view = unmodifiable.get(null);
        Field inner = view.getClass().getDeclaredField("m");
        inner.setAccessible(true);
        Map<String, String> live = (Map<String, String>) inner.get(view);
        live.clear();
        live.putAll(env);
        String root = env.get("LAMBDA_TASK_ROOT");
        if (root != null) {
            // Where the runtime client looks for the function's classes and lib/*.jar.
            System.setProperty("user.dir", root);
        }
    }

    private static void runClient(String handler) throws Throwable {
        if (handler == null || handler.isEmpty()) {
            System.err.println("petrel: _HANDLER is not set");
            System.exit(1);
        }
        List<String> argv = new ArrayList<>();
        argv.add(handler);
        try {
            Class.forName(MAIN)
                    .getMethod("main", String[].class)
                    .invoke(null, (Object) argv.toArray(new String[0]));
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }
}
