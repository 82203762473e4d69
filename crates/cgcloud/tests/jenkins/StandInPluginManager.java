// A stand-in for the plugin installation manager (jenkins-plugin-manager.jar) in cgcloud's
// end-to-end test. It takes the arguments cgcloud's jenkins-master role gives the real tool,
// checks them as the real tool would (the war exists, pinned versions only), and writes one
// .jpi per line of the plugin file into a fresh download directory.

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;

public class StandInPluginManager {
    public static void main(String[] args) throws Exception {
        String war = null, file = null, dir = null, latest = null, center = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--war" -> war = args[i + 1];
                case "--plugin-file" -> file = args[i + 1];
                case "--plugin-download-directory" -> dir = args[i + 1];
                case "--latest" -> latest = args[i + 1];
                case "--jenkins-update-center" -> center = args[i + 1];
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        if (war == null || !Files.isRegularFile(Paths.get(war))) throw new IllegalArgumentException("no war at " + war);
        if (!"false".equals(latest)) throw new IllegalArgumentException("--latest false is what keeps versions pinned");
        if (center == null || file == null || dir == null) throw new IllegalArgumentException("missing options");
        Path d = Paths.get(dir);
        if (Files.exists(d)) {
            try (Stream<Path> s = Files.walk(d)) { for (Path p : s.sorted(Comparator.reverseOrder()).toList()) Files.delete(p); }
        }
        Files.createDirectories(d);
        List<String> lines = Files.readAllLines(Paths.get(file));
        int n = 0;
        for (String l : lines) {
            l = l.trim();
            if (l.isEmpty() || l.startsWith("#")) continue;
            String[] p = l.split(":");
            if (p.length != 2 || p[1].isEmpty() || p[1].equals("latest")) throw new IllegalArgumentException("not pinned: " + l);
            Files.writeString(d.resolve(p[0] + ".jpi"), "stand-in plugin " + p[0] + " " + p[1] + "\n");
            n++;
        }
        System.out.println("installed " + n + " plugins into " + dir);
    }
}
