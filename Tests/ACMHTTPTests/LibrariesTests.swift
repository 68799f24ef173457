import Testing

@testable import ACMHTTP

/// Should link libmicrohttpd and jansson and read their versions from the libraries themselves.
@Test func librariesLink() {
    #expect(microhttpdVersion.split(separator: ".").count >= 2)
    #expect(janssonVersion.split(separator: ".").count >= 2)
}
