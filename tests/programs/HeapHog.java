import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/** A service whose heap grows: first holds args[0] MiB of direct buffers (the fixed native
 *  memory a real service keeps: I/O buffers, caches), then fills the Java heap with live 1 MiB
 *  arrays, touching every page, until something stops it. Exits 3 on the JVM's own
 *  OutOfMemoryError, so a test can tell it from the kernel's kill. */
public class HeapHog {
    public static void main(String[] args) {
        List<Object> held = new ArrayList<>();
        try {
            for (int m = 0; m < Integer.parseInt(args[0]); m++) {
                ByteBuffer b = ByteBuffer.allocateDirect(1 << 20);
                for (int i = 0; i < b.capacity(); i += 4096) {
                    b.put(i, (byte) 1);
                }
                held.add(b);
            }
            while (true) {
                byte[] b = new byte[1 << 20];
                for (int i = 0; i < b.length; i += 4096) {
                    b[i] = 1;
                }
                held.add(b);
            }
        } catch (OutOfMemoryError e) {
            held = null;
            System.exit(3);
        }
    }
}
