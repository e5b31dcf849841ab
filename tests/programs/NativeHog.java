import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/** Holds 1 MiB direct buffers (native memory outside the Java heap), each written through,
 *  until something stops it. Exits 3 on the JVM's own OutOfMemoryError. */
public class NativeHog {
    public static void main(String[] args) {
        List<ByteBuffer> held = new ArrayList<>();
        try {
            while (true) {
                ByteBuffer b = ByteBuffer.allocateDirect(1 << 20);
                for (int i = 0; i < b.capacity(); i += 4096) {
                    b.put(i, (byte) 1);
                }
                held.add(b);
            }
        } catch (OutOfMemoryError e) {
            held = null;
            System.exit(3);
        }
    }
}
