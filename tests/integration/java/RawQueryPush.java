import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;

/** A provider's push as JDK clients make it: the URL exactly as given, raw spaces and UTF-8
 *  in the query (HttpURLConnection does not encode them). Prints the status and the body.
 *  Run as a single-file program: java RawQueryPush.java URL */
public class RawQueryPush {
    public static void main(String[] args) throws Exception {
        HttpURLConnection connection = (HttpURLConnection) new URL(args[0]).openConnection();
        connection.setRequestMethod("GET");
        int status = connection.getResponseCode();
        InputStream body = status < 400 ? connection.getInputStream() : connection.getErrorStream();
        System.out.println(status);
        System.out.println(new String(body.readAllBytes(), StandardCharsets.UTF_8));
    }
}
