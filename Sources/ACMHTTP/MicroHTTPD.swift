import CMicroHTTPD
import Foundation

// The only file that imports libmicrohttpd. It turns MHD's callback protocol into one Swift call per
// complete request (`HTTPHandler.handle`), with asynchronous answers through connection suspend/resume:
// HTTP threads never wait for a model.

/// An HTTP answer.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A request as a handler reads and answers it: `HTTPExchange` on the wire, a plain object in tests.
public protocol HTTPRequest: AnyObject, Sendable {
    var method: String { get }
    /// The path, without the query string.
    var path: String { get }
    var body: [UInt8] { get }
    /// When it arrived, in `DispatchTime` nanoseconds.
    var arrived: UInt64 { get }
    /// A request header (case-insensitive name).
    func header(_ name: String) -> String?
    /// A query-string argument.
    func query(_ name: String) -> String?
    /// Answers a request the handler kept (returned nil for). Call exactly once, from any thread.
    func complete(_ response: HTTPResponse)
}

/// One request, from its first header line to the end of its answer. The handler reads it and either
/// answers at once or keeps it and calls `complete` later, from any thread.
public final class HTTPExchange: HTTPRequest, @unchecked Sendable {
    public let method: String
    /// The path, without the query string.
    public let path: String
    public private(set) var body: [UInt8] = []
    /// Set when the body went over the size limit; the rest of it was discarded.
    public private(set) var bodyTooLarge = false
    /// Set when a body of undeclared length would have crossed the server's cap on buffered body bytes;
    /// the rest of it was discarded.
    fileprivate var bodyOverCap = false
    /// Bytes of the server's body budget this request holds (`HTTPServer.reserve`).
    fileprivate var reserved = 0
    /// A refusal decided from the headers, sent once the body has been read and dropped: for a client that did
    /// not ask `Expect: 100-continue`, and so sends its body without waiting for an answer. Answering before
    /// the body would close the connection under it, and the client would see a reset instead of the answer.
    fileprivate var refusalAfterBody: HTTPResponse?
    public let arrived = DispatchTime.now().uptimeNanoseconds

    fileprivate let connection: OpaquePointer
    fileprivate unowned let server: HTTPServer
    private let lock = NSLock()
    fileprivate var answer: HTTPResponse?
    fileprivate var suspended = false
    fileprivate var queued = false
    /// Valid only inside `handle`: MHD's lookups need the connection to be in the handler.
    fileprivate var inHandler = false
    /// Handed to the handler (counted in `HTTPServer.openExchanges`).
    fileprivate var handled = false

    fileprivate init(connection: OpaquePointer, method: String, path: String, server: HTTPServer) {
        self.connection = connection
        self.method = method
        self.path = path
        self.server = server
    }

    /// A request header (case-insensitive name); only while `handle` runs.
    public func header(_ name: String) -> String? {
        precondition(inHandler, "headers are only readable inside handle()")
        return MHD_lookup_connection_value(connection, .HEADER_KIND, name).map { String(cString: $0) }
    }

    /// A query-string argument; only while `handle` runs.
    public func query(_ name: String) -> String? {
        precondition(inHandler, "query arguments are only readable inside handle()")
        return MHD_lookup_connection_value(connection, .GET_ARGUMENT_KIND, name).map { String(cString: $0) }
    }

    /// Answers a request the handler kept (returned nil for). Call exactly once.
    public func complete(_ response: HTTPResponse) {
        lock.lock()
        answer = response
        let resume = suspended
        suspended = false
        lock.unlock()
        // MHD then calls the access handler again, which queues `answer`.
        if resume { MHD_resume_connection(connection) }
    }

    fileprivate func append(_ data: UnsafePointer<CChar>, _ count: Int, limit: Int) {
        if bodyTooLarge || bodyOverCap || refusalAfterBody != nil { return }
        if body.count + count > limit {
            bodyTooLarge = true
            dropBody()
            return
        }
        // A body without Content-Length takes its budget as it arrives.
        if body.count + count > reserved {
            let more = body.count + count - reserved
            guard server.reserve(more) else {
                bodyOverCap = true
                dropBody()
                return
            }
            reserved += more
        }
        data.withMemoryRebound(to: UInt8.self, capacity: count) { body.append(contentsOf: UnsafeBufferPointer(start: $0, count: count)) }
    }

    /// Frees the body and gives its bytes back to the server's budget: once the handler has parsed it, or
    /// when the request ends.
    fileprivate func dropBody() {
        body = []
        if reserved > 0 {
            server.release(reserved)
            reserved = 0
        }
    }

    /// Suspends the connection unless the answer already came; returns the answer if it did.
    fileprivate func suspendUnlessAnswered() -> HTTPResponse? {
        lock.lock()
        defer { lock.unlock() }
        if let answer { return answer }
        suspended = true
        MHD_suspend_connection(connection)
        return nil
    }

    fileprivate func reserveBody(_ bytes: Int) {
        body.reserveCapacity(bytes)
    }

    fileprivate func takeAnswer() -> HTTPResponse? {
        lock.lock()
        defer { lock.unlock() }
        return answer
    }
}

/// Why the server refused a request before handing it to the handler.
public enum HTTPRefusal: Sendable {
    /// The path and query are longer than `maxURIBytes` (414).
    case uriTooLong
    /// The header fields are larger than `maxHeaderBytes` (431).
    case headersTooLarge
    /// The body is larger than `maxBodyBytes` (413).
    case bodyTooLarge
    /// Buffering the body would cross `maxInflightBodyBytes`, the cap over all requests (503).
    case bodyBudgetExhausted
    /// An HTTP/1.1 request without a Host header field (400, RFC 9112 section 3.2). libmicrohttpd refuses these
    /// itself only in its strict mode, and 0.9.75 then writes its answer's header block twice; the check is here.
    case missingHost
}

/// What the server calls for each request.
public protocol HTTPHandler: AnyObject, Sendable {
    /// Asked once the headers are in, before any of the body is read: an answer refuses the request
    /// (e.g. 401) without reading its body; nil lets it through.
    func admit(_ exchange: HTTPExchange) -> HTTPResponse?
    /// The response to a complete request now, or nil to answer later with `exchange.complete`.
    func handle(_ exchange: HTTPExchange) -> HTTPResponse?
    /// The answer to a request the server refuses on its own limits; sent without reading the rest of the body.
    func refuse(_ exchange: HTTPExchange, _ refusal: HTTPRefusal) -> HTTPResponse
    /// A connection was closed because its request headers did not arrive in time.
    func headerDeadlineExpired()
}

/// A PEM certificate chain and its private key, for HTTPS.
public struct TLSCredentials: Sendable {
    public var certificatePEM: String
    public var keyPEM: String

    public init(certificatePEM: String, keyPEM: String) {
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
    }
}

public struct HTTPServerOptions: Sendable {
    public var host: String
    public var port: Int
    public var threads: Int
    public var maxBodyBytes: Int
    public var maxHeaderBytes: Int
    public var maxURIBytes = 8 << 10
    /// Bytes of request bodies buffered at once, over all requests.
    public var maxInflightBodyBytes = 512 << 20
    public var connectionLimit: Int
    public var perIPConnectionLimit: Int
    /// A connection idle this long (no byte read or written) is closed.
    public var idleTimeoutSeconds: Int
    /// A request's headers must be complete this long after the connection opened (or, on a kept-alive
    /// connection, after the previous answer was sent plus the idle timeout); else the connection is closed.
    public var headerTimeoutSeconds = 10
    /// HTTPS when set.
    public var tls: TLSCredentials?

    public init(
        host: String, port: Int, threads: Int, maxBodyBytes: Int, maxHeaderBytes: Int, connectionLimit: Int,
        perIPConnectionLimit: Int, idleTimeoutSeconds: Int
    ) {
        self.host = host
        self.port = port
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.maxHeaderBytes = maxHeaderBytes
        self.connectionLimit = connectionLimit
        self.perIPConnectionLimit = perIPConnectionLimit
        self.idleTimeoutSeconds = idleTimeoutSeconds
    }
}

public struct HTTPServerError: Error, CustomStringConvertible {
    public let description: String
}

/// libmicrohttpd with epoll and its own thread pool.
public final class HTTPServer: @unchecked Sendable {
    let options: HTTPServerOptions
    let handler: any HTTPHandler
    private var daemon: OpaquePointer?
    private let lock = NSLock()
    private var open = 0  // exchanges created and not yet finished
    private var buffered = 0  // body bytes reserved by requests (`reserve`)
    private var releasedSinceTrim = 0
    /// The PEM strings MHD was given; it reads them while starting, and they live as long as the daemon.
    private var tlsStrings: [UnsafeMutablePointer<CChar>] = []

    /// Connections that are receiving a request (its headers or its body, or waiting for the next one), by
    /// connection: their socket, and when their headers are due (`DispatchTime` nanoseconds; nil once they are in).
    /// Guarded by `watchLock`.
    private var receiving: [OpaquePointer: (socket: Int32, deadline: UInt64?)] = [:]
    private let watchLock = NSLock()
    private var watchdog: (any DispatchSourceTimer)?

    public init(options: HTTPServerOptions, handler: any HTTPHandler) {
        self.options = options
        self.handler = handler
    }

    deinit {
        stop()
    }

    /// Whether this libmicrohttpd was built with HTTPS (GnuTLS).
    public static var supportsTLS: Bool { MHD_is_feature_supported(.FEATURE_TLS) == .YES }

    /// Binds and starts serving; throws if the address cannot be used.
    public func start() throws {
        // Request bodies of a MiB or more get their own mappings, which go back to the system when freed.
        // (glibc's threshold otherwise rises to 32 MiB after the first large free, and a burst of uploads
        // then stays in the heap.) Process-wide, as request bodies are most of what this process allocates.
        _ = mallopt(M_MMAP_THRESHOLD, 1 << 20)
        // At most 4 malloc arenas, not glibc's 8 per core: the HTTP pool, the runners and the compute workers
        // otherwise each fragment an arena of their own, and the process's RSS creeps up by tens of MiB over the
        // first minutes of mixed traffic (docs/reliability.md, "Soak").
        _ = mallopt(M_ARENA_MAX, 4)
        var flags = UInt32(MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue)
        flags |= UInt32(MHD_ALLOW_SUSPEND_RESUME.rawValue) | UInt32(MHD_USE_ERROR_LOG.rawValue)
        let cls = Unmanaged.passUnretained(self).toOpaque()
        let completed = unsafeBitCast(
            acmRequestCompleted as MHD_RequestCompletedCallback, to: UnsafeRawPointer.self)
        let notify = unsafeBitCast(acmConnectionNotify as MHD_NotifyConnectionCallback, to: UnsafeRawPointer.self)
        // The pool holds a request's line and headers plus MHD's read buffer. Room for twice our own limits, so
        // that a request over them reaches `admit`'s checks and gets our 414/431 with its limit named; only one
        // more than about twice as large meets libmicrohttpd's own answer (JSON too: `mhdCreateResponseFromBuffer`).
        let memory = max(64 << 10, 2 * (options.maxHeaderBytes + options.maxURIBytes))

        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let address: UnsafeMutableRawPointer
        if options.host.contains(":") {
            flags |= UInt32(MHD_USE_IPv6.rawValue)
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(options.port).bigEndian)
            guard inet_pton(AF_INET6, options.host, &v6.sin6_addr) == 1 else {
                throw HTTPServerError(description: "'\(options.host)' is not an IPv6 address")
            }
            address = withUnsafeMutablePointer(to: &v6) { UnsafeMutableRawPointer($0) }
        } else {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(options.port).bigEndian)
            let host = options.host == "localhost" ? "127.0.0.1" : options.host
            guard inet_pton(AF_INET, host, &v4.sin_addr) == 1 else {
                throw HTTPServerError(description: "'\(options.host)' is not an IPv4 address")
            }
            address = withUnsafeMutablePointer(to: &v4) { UnsafeMutableRawPointer($0) }
        }

        // MHD reads each option as an int, then its value(s) with their C types.
        func option(_ o: MHD_OPTION) -> Int32 { Int32(o.rawValue) }
        var args: [any CVarArg] = []
        args += [option(.THREAD_POOL_SIZE), UInt32(options.threads)]
        args += [option(.CONNECTION_LIMIT), UInt32(options.connectionLimit)]
        args += [option(.PER_IP_CONNECTION_LIMIT), UInt32(options.perIPConnectionLimit)]
        args += [option(.CONNECTION_TIMEOUT), UInt32(options.idleTimeoutSeconds)]
        args += [option(.CONNECTION_MEMORY_LIMIT), Int(memory)]  // size_t
        args += [option(.NOTIFY_COMPLETED), OpaquePointer(completed), OpaquePointer(cls)]
        args += [option(.NOTIFY_CONNECTION), OpaquePointer(notify), OpaquePointer(cls)]
        args += [option(.SOCK_ADDR), OpaquePointer(address)]
        args += [option(.LISTENING_ADDRESS_REUSE), UInt32(1)]
        if let tls = options.tls {
            guard Self.supportsTLS else {
                throw HTTPServerError(description: "this libmicrohttpd (\(microhttpdVersion)) was built without HTTPS support")
            }
            flags |= UInt32(MHD_USE_TLS.rawValue)
            tlsStrings = [strdup(tls.keyPEM), strdup(tls.certificatePEM), strdup(Self.tlsPriorities)]
            args += [option(.HTTPS_MEM_KEY), OpaquePointer(tlsStrings[0])]
            args += [option(.HTTPS_MEM_CERT), OpaquePointer(tlsStrings[1])]
            args += [option(.HTTPS_PRIORITIES), OpaquePointer(tlsStrings[2])]
        }
        args += [option(.END)]
        daemon = withVaList(args) { list in
            MHD_start_daemon_va(flags, UInt16(options.port), nil, nil, acmAccessHandler, cls, list)
        }
        withExtendedLifetime((v4, v6)) {}
        if daemon == nil {
            freeTLSStrings()
            if options.tls != nil {
                throw HTTPServerError(
                    description: "cannot serve HTTPS on \(options.host):\(options.port): the address is in use or not "
                        + "available, or the certificate or key is not valid PEM, or they do not match (see the error above)")
            }
            throw HTTPServerError(description: "cannot listen on \(options.host):\(options.port) (address in use or not available)")
        }
        startWatchdog()
    }

    /// GnuTLS's defaults without the protocol versions older than TLS 1.2.
    static let tlsPriorities = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

    /// Stops accepting connections; requests on open connections are still served.
    public func quiesce() {
        guard let daemon else { return }
        let fd = MHD_quiesce_daemon(daemon)
        if fd >= 0 { close(fd) }
    }

    /// Requests handed to the handler and not yet finished (answered and sent, or dropped by the client); not those
    /// still receiving their bodies.
    public var openExchanges: Int {
        lock.withLock { open }
    }

    /// Stops the daemon: closes every connection.
    public func stop() {
        watchdog?.cancel()
        watchdog = nil
        guard let d = daemon else { return }
        daemon = nil
        MHD_stop_daemon(d)
        freeTLSStrings()
    }

    private func freeTLSStrings() {
        for s in tlsStrings {
            memset(s, 0, strlen(s))  // the private key
            free(s)
        }
        tlsStrings = []
    }

    /// A request was handed to the handler; the drain at shutdown waits for it.
    fileprivate func opened() {
        lock.withLock { open += 1 }
    }

    fileprivate func finished() {
        lock.withLock { open -= 1 }
    }

    // MARK: - Body budget

    /// Takes `bytes` of the budget for buffered bodies; false (and nothing taken) when it would cross
    /// `maxInflightBodyBytes`.
    fileprivate func reserve(_ bytes: Int) -> Bool {
        lock.withLock {
            guard buffered + bytes <= options.maxInflightBodyBytes else { return false }
            buffered += bytes
            return true
        }
    }

    /// Gives bytes back. When a burst is over (nothing buffered) after large bodies, hands the freed heap back to
    /// the system, so that the process shrinks to its size before the burst.
    fileprivate func release(_ bytes: Int) {
        let trim: Bool = lock.withLock {
            buffered -= bytes
            releasedSinceTrim += bytes
            guard buffered == 0, releasedSinceTrim >= Self.trimAfterBytes else { return false }
            releasedSinceTrim = 0
            return true
        }
        if trim { DispatchQueue.global(qos: .utility).async { _ = malloc_trim(0) } }
    }

    static let trimAfterBytes = 64 << 20

    // MARK: - Receiving connections

    /// A connection opened, or finished a request and stays open: its next request's headers are due by `deadline`.
    fileprivate func awaitHeaders(_ connection: OpaquePointer, deadline: UInt64) {
        let socket = CMicroHTTPD_connection_fd(connection)
        guard socket >= 0 else { return }
        watchLock.withLock { receiving[connection] = (socket, deadline) }
    }

    /// The connection's headers are in; its body (if any) is on its way.
    fileprivate func headersArrived(_ connection: OpaquePointer) {
        watchLock.withLock { receiving[connection]?.deadline = nil }
    }

    /// The request is complete, or the connection closed.
    fileprivate func stopWatching(_ connection: OpaquePointer) {
        watchLock.withLock { _ = receiving.removeValue(forKey: connection) }
    }

    /// Twice a second, looks at every connection receiving a request, and shuts down the socket of one past its
    /// header deadline or whose client has closed its end; MHD then sees the connection end, on its own thread.
    ///
    /// The second case works around libmicrohttpd 0.9.75 under epoll: when a client's last bytes and its FIN
    /// arrive together (a client that sends half a body and goes away), MHD reads the bytes, takes the short read
    /// for "nothing more to read", and never reads the end of the stream, which brings no new epoll edge; the
    /// connection would stay open until the idle timeout. `shutdown` brings that edge.
    ///
    /// The socket is still open when `recv` and `shutdown` run: MHD reports a connection closed (`stopWatching`,
    /// under the same lock) before it closes the socket.
    private func startWatchdog() {
        let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        timer.schedule(deadline: .now() + .milliseconds(500), repeating: .milliseconds(500))
        timer.setEventHandler { [weak self] in self?.watchReceiving() }
        timer.resume()
        watchdog = timer
    }

    private func watchReceiving() {
        let now = DispatchTime.now().uptimeNanoseconds
        let expired: Int = watchLock.withLock {
            var expired = 0
            var byte: UInt8 = 0
            for (connection, entry) in receiving {
                let late = entry.deadline.map { $0 <= now } ?? false
                // 0: the client closed its end and nothing is left to read.
                let ended = !late && recv(entry.socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0
                guard late || ended else { continue }
                shutdown(entry.socket, Int32(SHUT_RDWR))
                receiving.removeValue(forKey: connection)
                if late { expired += 1 }
            }
            return expired
        }
        for _ in 0..<expired { handler.headerDeadlineExpired() }
    }

    fileprivate var headerDeadline: UInt64 {
        DispatchTime.now().uptimeNanoseconds + UInt64(options.headerTimeoutSeconds) * 1_000_000_000
    }

    fileprivate var keepAliveDeadline: UInt64 {
        DispatchTime.now().uptimeNanoseconds
            + UInt64(options.idleTimeoutSeconds + options.headerTimeoutSeconds) * 1_000_000_000
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit now in force. Each connection
/// takes one descriptor.
public func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    return Int(clamping: limit.rlim_cur)
}

/// Queues `response` on the connection; MHD copies the body.
private func send(_ response: HTTPResponse, on connection: OpaquePointer) -> MHD_Result {
    let r = response.body.withUnsafeBytes { raw in
        responseCopying(UnsafeRawBufferPointer(start: raw.baseAddress, count: raw.count))
    }
    guard let r else { return .NO }
    defer { MHD_destroy_response(r) }
    for (name, value) in response.headers { _ = MHD_add_response_header(r, name, value) }
    return MHD_queue_response(connection, UInt32(response.status), r)
}

/// An MHD response holding a copy of `body`.
private func responseCopying(_ body: UnsafeRawBufferPointer) -> OpaquePointer? {
    guard let copy = malloc(max(body.count, 1)) else { return nil }
    if let base = body.baseAddress { copy.copyMemory(from: base, byteCount: body.count) }
    guard let r = MHD_create_response_from_buffer_with_free_callback(body.count, copy, free) else {
        free(copy)
        return nil
    }
    return r
}

/// libmicrohttpd's own error pages as JSON.
///
/// libmicrohttpd answers a few requests itself, before any handler sees them: a request line and header
/// fields that overflow its per-connection pool (414 or 431), a request it cannot parse, a bad Content-Length
/// or chunk size, an unsupported HTTP version (505). Its answers are
/// HTML pages compiled into the library, which it hands to this function as persistent buffers. The library
/// calls the function through its procedure linkage table, and the dynamic linker binds such a call to the
/// executable's definition before the library's own: this one, which is exported from every program that links
/// this module. It turns those pages into `{"error": …}` with `Content-Type: application/json`, and builds any
/// other response as the library would. (Tests/server/test_security.py sends headers four times the pool's size
/// and checks the answer is JSON.)
@_cdecl("MHD_create_response_from_buffer")
public func mhdCreateResponseFromBuffer(
    _ size: Int, _ buffer: UnsafeMutableRawPointer?, _ mode: MHD_ResponseMemoryMode
) -> OpaquePointer? {
    let body = UnsafeRawBufferPointer(start: buffer, count: buffer == nil ? 0 : size)
    if mode == .RESPMEM_PERSISTENT, let message = libraryErrorMessage(html: body) {
        let json = JSON.object([("error", .string(message))]).bytes
        let r = json.withUnsafeBytes { responseCopying($0) }
        if let r { _ = MHD_add_response_header(r, "Content-Type", "application/json") }
        return r
    }
    switch mode {
    case .RESPMEM_PERSISTENT: return MHD_create_response_from_buffer_with_free_callback(size, buffer, nil)
    case .RESPMEM_MUST_FREE: return MHD_create_response_from_buffer_with_free_callback(size, buffer, free)
    default: return responseCopying(body)
    }
}

/// The text of one of libmicrohttpd's HTML error pages (`<html><head><title>…</title></head><body>…</body></html>`):
/// its body without tags or entities; nil for anything else.
func libraryErrorMessage(html: UnsafeRawBufferPointer) -> String? {
    let page = String(decoding: html, as: UTF8.self)
    guard page.hasPrefix("<html><head><title>"), let open = page.range(of: "<body>"),
        let close = page.range(of: "</body>", range: open.upperBound..<page.endIndex)
    else { return nil }
    var text = ""
    var inTag = false
    for c in page[open.upperBound..<close.lowerBound] {
        if c == "<" { inTag = true } else if c == ">" { inTag = false } else if !inTag { text.append(c) }
    }
    for (entity, c) in [("&quot;", "\""), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")] {
        text = text.replacingOccurrences(of: entity, with: c)
    }
    return text.isEmpty ? nil : text
}

/// MHD's access handler: called on the first header line, for each piece of the body, once the body
/// is complete, and again after a resume. A top-level function, as C callbacks must be.
func acmAccessHandler(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?, url: UnsafePointer<CChar>?,
    method: UnsafePointer<CChar>?, version: UnsafePointer<CChar>?, uploadData: UnsafePointer<CChar>?,
    uploadDataSize: UnsafeMutablePointer<Int>?, conCls: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> MHD_Result {
    guard let cls, let connection, let conCls, let uploadDataSize else { return .NO }
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()

    guard let state = conCls.pointee else {
        // First call: the headers are in, none of the body is read.
        server.headersArrived(connection)
        let exchange = HTTPExchange(
            connection: connection, method: method.map { String(cString: $0) } ?? "",
            path: url.map { String(cString: $0) } ?? "/", server: server)
        conCls.pointee = Unmanaged.passRetained(exchange).toOpaque()
        if let refusal = admit(exchange, url: url, version: version, server: server) {
            // MHD closes the connection instead of reading a body.
            exchange.queued = true
            return send(refusal, on: connection)
        }
        return .YES
    }
    let exchange = Unmanaged<HTTPExchange>.fromOpaque(state).takeUnretainedValue()
    if exchange.queued {
        uploadDataSize.pointee = 0
        return .YES
    }
    if uploadDataSize.pointee > 0 {
        if let uploadData { exchange.append(uploadData, uploadDataSize.pointee, limit: server.options.maxBodyBytes) }
        uploadDataSize.pointee = 0
        return .YES
    }
    // The body is complete, or this is the call after a resume.
    server.stopWatching(connection)
    if let answer = exchange.takeAnswer() ?? exchange.refusalAfterBody {
        exchange.queued = true
        return send(answer, on: connection)
    }
    exchange.inHandler = true
    defer { exchange.inHandler = false }
    let refusal: HTTPRefusal? = exchange.bodyTooLarge ? .bodyTooLarge : exchange.bodyOverCap ? .bodyBudgetExhausted : nil
    if let refusal {
        exchange.queued = true
        return send(server.handler.refuse(exchange, refusal), on: connection)
    }
    exchange.handled = true
    server.opened()
    let immediate = server.handler.handle(exchange)
    exchange.inHandler = false
    // The handler has parsed the body into its job, if any.
    exchange.dropBody()
    if let response = immediate ?? exchange.suspendUnlessAnswered() {
        exchange.queued = true
        return send(response, on: connection)
    }
    return .YES
}

/// The checks on a request's line and headers, before its body: our size limits, the handler's (authentication),
/// the declared body size, and the budget for buffered bodies, which the declared length takes at once. The
/// refusal to send now, or nil: the request goes on, or its refusal waits for its body (`refusalAfterBody`).
private func admit(
    _ exchange: HTTPExchange, url: UnsafePointer<CChar>?, version: UnsafePointer<CChar>?, server: HTTPServer
) -> HTTPResponse? {
    let connection = exchange.connection
    let options = server.options
    exchange.inHandler = true
    defer { exchange.inHandler = false }
    let declared = exchange.header("Content-Length").flatMap { Int($0) } ?? 0
    // A client that sends its body without waiting (no `Expect: 100-continue`) has a body of declared length within
    // `maxBodyBytes` read and dropped before its refusal; answered first, it would see a reset instead.
    let sendsBodyAtOnce = (1...max(1, options.maxBodyBytes)).contains(declared)
        && exchange.header("Expect")?.lowercased() != "100-continue"
    func refuse(_ response: HTTPResponse) -> HTTPResponse? {
        guard sendsBodyAtOnce else { return response }
        exchange.refusalAfterBody = response
        return nil
    }
    if let version, strcmp(version, "HTTP/1.1") == 0, exchange.header("Host") == nil {
        return refuse(server.handler.refuse(exchange, .missingHost))
    }
    let uriBytes = (url.map { strlen($0) } ?? 0) + valueBytes(connection, .GET_ARGUMENT_KIND)
    if uriBytes > options.maxURIBytes { return refuse(server.handler.refuse(exchange, .uriTooLong)) }
    if valueBytes(connection, .HEADER_KIND) > options.maxHeaderBytes {
        return refuse(server.handler.refuse(exchange, .headersTooLarge))
    }
    if let refusal = server.handler.admit(exchange) { return refuse(refusal) }
    guard declared > 0 else { return nil }
    if declared > options.maxBodyBytes { return server.handler.refuse(exchange, .bodyTooLarge) }
    guard server.reserve(declared) else { return refuse(server.handler.refuse(exchange, .bodyBudgetExhausted)) }
    exchange.reserved = declared
    exchange.reserveBody(declared)
    return nil
}

/// The bytes of a request's header fields (or query arguments) as sent: each name and value, plus ": " and
/// the line end (or "=" and "&").
private func valueBytes(_ connection: OpaquePointer, _ kind: MHD_ValueKind) -> Int {
    var total = 0
    _ = MHD_get_connection_values_n(connection, kind, acmCountValueBytes, &total)
    return total
}

func acmCountValueBytes(
    cls: UnsafeMutableRawPointer?, kind: MHD_ValueKind, key: UnsafePointer<CChar>?, keySize: Int,
    value: UnsafePointer<CChar>?, valueSize: Int
) -> MHD_Result {
    cls?.assumingMemoryBound(to: Int.self).pointee += keySize + valueSize + 4
    return .YES
}

/// MHD's completion callback: the request is over (answered, or the client went away). Releases the
/// exchange created on the first call; a connection kept alive waits for its next request's headers.
func acmRequestCompleted(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?,
    conCls: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, toe: MHD_RequestTerminationCode
) {
    guard let cls, let state = conCls?.pointee else { return }
    conCls?.pointee = nil
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
    let exchange = Unmanaged<HTTPExchange>.fromOpaque(state).takeRetainedValue()
    exchange.dropBody()
    if exchange.handled { server.finished() }
    if toe == .REQUEST_TERMINATED_COMPLETED_OK, let connection {
        server.awaitHeaders(connection, deadline: server.keepAliveDeadline)
    }
}

/// MHD's connection callback: a connection opened (its first request's headers are due) or closed.
func acmConnectionNotify(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?, socketContext: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
    code: MHD_ConnectionNotificationCode
) {
    guard let cls, let connection else { return }
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
    if code == .CONNECTION_NOTIFY_STARTED {
        server.awaitHeaders(connection, deadline: server.headerDeadline)
    } else {
        server.stopWatching(connection)
    }
}

/// libmicrohttpd's version string, e.g. "0.9.75", as the linked library reports it.
public let microhttpdVersion = String(cString: MHD_get_version())
