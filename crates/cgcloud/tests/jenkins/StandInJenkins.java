// A stand-in for jenkins.war in cgcloud's end-to-end test: Jenkins itself cannot be downloaded
// where the test runs. It is started exactly as the Debian package starts Jenkins (by its unit
// and /usr/bin/jenkins, with cgcloud's drop-in), and does what cgcloud's jenkins-master role
// relies on Jenkins to do: listen where JENKINS_LISTEN_ADDRESS says, read its secrets from the
// directory SECRETS names (as JCasC does), read every configuration-as-code file, and reload
// them on POST /configuration-as-code/reload from an admin with a crumb of the same session.
// GET /cgcloud-standin/status tells the test what it saw.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HexFormat;
import java.util.List;
import java.util.stream.Stream;

public class StandInJenkins {
    static String listen = "0.0.0.0";
    static int port = 8080;
    static String password;
    static String crumb;
    static String session;
    static int reloads = 0;
    static int refused = 0;
    /// How many coming reloads fail as Jenkins fails one whose YAML it rejects (HTTP 500).
    static int failReloads = 0;
    static String casc = "";
    static List<String> plugins = new ArrayList<>();

    public static void main(String[] args) throws Exception {
        for (String a : args) {
            if (a.startsWith("--httpListenAddress=")) listen = a.substring(a.indexOf('=') + 1);
            if (a.startsWith("--httpPort=")) port = Integer.parseInt(a.substring(a.indexOf('=') + 1));
        }
        String secrets = System.getenv("SECRETS");
        password = Files.readString(Paths.get(secrets, "ADMIN_PASSWORD")).trim();
        String key = Files.readString(Paths.get(secrets, "AGENT_SSH_KEY"));
        if (!key.startsWith("-----BEGIN RSA PRIVATE KEY-----")) throw new IllegalStateException("AGENT_SSH_KEY is no PEM RSA key");
        Path home = Paths.get(System.getenv("JENKINS_HOME"));
        try (Stream<Path> s = Files.list(home.resolve("plugins"))) {
            s.map(p -> p.getFileName().toString()).filter(n -> n.endsWith(".jpi")).sorted().forEach(plugins::add);
        }
        // The log of starts: what each one found (a start before the plugins were in place shows).
        Files.writeString(home.resolve("standin-starts.log"), System.currentTimeMillis() + " plugins=" + plugins.size() + "\n",
                StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        readCasc();
        SecureRandom r = new SecureRandom();
        byte[] b = new byte[16];
        r.nextBytes(b);
        crumb = HexFormat.of().formatHex(b);
        r.nextBytes(b);
        session = HexFormat.of().formatHex(b);
        HttpServer server = HttpServer.create(new InetSocketAddress(listen, port), 0);
        server.createContext("/crumbIssuer/api/xml", StandInJenkins::crumb);
        server.createContext("/configuration-as-code/reload", StandInJenkins::reload);
        server.createContext("/cgcloud-standin/status", StandInJenkins::status);
        server.createContext("/cgcloud-standin/fail-next-reload", ex -> { failReloads++; send(ex, 200, "ok"); });
        server.start();
        System.out.println("stand-in Jenkins on " + listen + ":" + port);
    }

    static void readCasc() throws IOException {
        StringBuilder all = new StringBuilder();
        try (Stream<Path> s = Files.list(Paths.get(System.getenv("CASC_JENKINS_CONFIG")))) {
            for (Path p : s.sorted().toList()) {
                String n = p.getFileName().toString();
                if (n.startsWith(".") || !(n.endsWith(".yaml") || n.endsWith(".yml"))) continue;
                all.append("# ").append(n).append('\n').append(Files.readString(p));
            }
        }
        casc = all.toString();
    }

    static boolean admin(HttpExchange ex) {
        String h = ex.getRequestHeaders().getFirst("Authorization");
        String want = "Basic " + Base64.getEncoder().encodeToString(("admin:" + password).getBytes(StandardCharsets.UTF_8));
        return want.equals(h);
    }

    static void crumb(HttpExchange ex) throws IOException {
        if (!admin(ex)) { refused++; send(ex, 401, "unauthorized"); return; }
        ex.getResponseHeaders().add("Set-Cookie", "JSESSIONID.standin=" + session + "; Path=/; HttpOnly");
        send(ex, 200, "Jenkins-Crumb:" + crumb);
    }

    static void reload(HttpExchange ex) throws IOException {
        String cookie = ex.getRequestHeaders().getFirst("Cookie");
        boolean ok = ex.getRequestMethod().equals("POST") && admin(ex)
                && crumb.equals(ex.getRequestHeaders().getFirst("Jenkins-Crumb"))
                && cookie != null && cookie.contains("JSESSIONID.standin=" + session);
        if (!ok) { refused++; send(ex, 403, "No valid crumb was included in the request"); return; }
        if (failReloads > 0) { failReloads--; send(ex, 500, "io.jenkins.plugins.casc.ConfiguratorException: rejected by the stand-in"); return; }
        readCasc();
        reloads++;
        send(ex, 200, "");
    }

    static void status(HttpExchange ex) throws IOException {
        String json = "{\"listen\":" + q(listen) + ",\"port\":" + port + ",\"home\":" + q(System.getenv("JENKINS_HOME"))
                + ",\"casc_dir\":" + q(System.getenv("CASC_JENKINS_CONFIG")) + ",\"java_opts\":" + q(String.valueOf(System.getenv("JAVA_OPTS")))
                + ",\"java_version\":" + q(System.getProperty("java.specification.version"))
                + ",\"user\":" + q(System.getProperty("user.name")) + ",\"password_length\":" + password.length()
                + ",\"plugins\":[" + String.join(",", plugins.stream().map(StandInJenkins::q).toList()) + "]"
                + ",\"reloads\":" + reloads + ",\"refused\":" + refused + ",\"casc\":" + q(casc) + "}";
        send(ex, 200, json);
    }

    static String q(String s) {
        StringBuilder o = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') o.append('\\').append(c);
            else if (c == '\n') o.append("\\n");
            else if (c < 0x20) o.append(String.format("\\u%04x", (int) c));
            else o.append(c);
        }
        return o.append('"').toString();
    }

    static void send(HttpExchange ex, int code, String body) throws IOException {
        byte[] b = body.getBytes(StandardCharsets.UTF_8);
        ex.sendResponseHeaders(code, b.length == 0 ? -1 : b.length);
        try (OutputStream o = ex.getResponseBody()) { o.write(b); }
    }
}
