import Testing

@testable import ACMHTTP

/// Should link libmicrohttpd and jansson and read their versions from the libraries themselves.
@Test func librariesLink() {
    #expect(microhttpdVersion.split(separator: ".").count >= 2)
    #expect(janssonVersion.split(separator: ".").count >= 2)
}

/// Should read the text of libmicrohttpd's HTML error pages, and nothing else, for the JSON that replaces them.
@Test func libraryErrorPagesBecomeMessages() {
    func message(_ page: String) -> String? {
        Array(page.utf8).withUnsafeBytes { libraryErrorMessage(html: $0) }
    }
    #expect(
        message(
            "<html><head><title>Request content too large</title></head><body>Your HTTP request has too large value "
                + "for <b>Content-Length</b> header.</body></html>")
            == "Your HTTP request has too large value for Content-Length header.")
    #expect(
        message(
            "<html><head><title>&quot;Host:&quot; header required</title></head><body>In HTTP 1.1, requests must "
                + "include a &quot;Host:&quot; header.</body></html>")
            == "In HTTP 1.1, requests must include a \"Host:\" header.")
    #expect(message("{\"error\":\"x\"}") == nil)
    #expect(message("<html><head><title>t</title></head><body></body></html>") == nil)
    #expect(message("") == nil)
}
