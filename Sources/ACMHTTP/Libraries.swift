import CJansson
import CMicroHTTPD

/// Versions of the C libraries the HTTP front end is built on, as the linked libraries report them.
public enum HTTPLibraries {
    /// libmicrohttpd's version string, e.g. "0.9.75".
    public static var microhttpdVersion: String { String(cString: MHD_get_version()) }
    /// jansson's version string, e.g. "2.14".
    public static var janssonVersion: String { String(cString: jansson_version_str()) }
}
