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
    public let arrived = DispatchTime.now().uptimeNanoseconds

    fileprivate let connection: OpaquePointer
    fileprivate unowned let server: HTTPServer
    private let lock = NSLock()
    fileprivate var answer: HTTPResponse?
    fileprivate var suspended = false
    fileprivate var queued = false
    /// Valid only inside `handle`: MHD's lookups need the connection to be in the handler.
    fileprivate var inHandler = false

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
        if bodyTooLarge { return }
        if body.count + count > limit {
            bodyTooLarge = true
            body = []
            return
        }
        data.withMemoryRebound(to: UInt8.self, capacity: count) { body.append(contentsOf: UnsafeBufferPointer(start: $0, count: count)) }
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

    fileprivate func takeAnswer() -> HTTPResponse? {
        lock.lock()
        defer { lock.unlock() }
        return answer
    }
}

/// What the server calls for each complete request.
public protocol HTTPHandler: AnyObject, Sendable {
    /// The response now, or nil to answer later with `exchange.complete`.
    func handle(_ exchange: HTTPExchange) -> HTTPResponse?
    /// The answer to a request whose declared body is over the limit, sent without reading the body.
    func bodyTooLarge(_ exchange: HTTPExchange) -> HTTPResponse
}

public struct HTTPServerOptions: Sendable {
    public var host: String
    public var port: Int
    public var threads: Int
    public var maxBodyBytes: Int
    public var maxHeaderBytes: Int
    public var connectionLimit: Int
    public var perIPConnectionLimit: Int
    public var connectionTimeoutSeconds: Int

    public init(
        host: String, port: Int, threads: Int, maxBodyBytes: Int, maxHeaderBytes: Int, connectionLimit: Int,
        perIPConnectionLimit: Int, connectionTimeoutSeconds: Int
    ) {
        self.host = host
        self.port = port
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.maxHeaderBytes = maxHeaderBytes
        self.connectionLimit = connectionLimit
        self.perIPConnectionLimit = perIPConnectionLimit
        self.connectionTimeoutSeconds = connectionTimeoutSeconds
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

    public init(options: HTTPServerOptions, handler: any HTTPHandler) {
        self.options = options
        self.handler = handler
    }

    /// Binds and starts serving; throws if the address cannot be used.
    public func start() throws {
        var flags = UInt32(MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue)
        flags |= UInt32(MHD_ALLOW_SUSPEND_RESUME.rawValue) | UInt32(MHD_USE_ERROR_LOG.rawValue)
        let cls = Unmanaged.passUnretained(self).toOpaque()
        let completed = unsafeBitCast(
            acmRequestCompleted as MHD_RequestCompletedCallback, to: UnsafeRawPointer.self)
        // The pool holds a request's headers plus MHD's read buffer; keep room for both.
        let memory = max(32 << 10, options.maxHeaderBytes * 2)

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
        args += [option(.CONNECTION_TIMEOUT), UInt32(options.connectionTimeoutSeconds)]
        args += [option(.CONNECTION_MEMORY_LIMIT), Int(memory)]  // size_t
        args += [option(.NOTIFY_COMPLETED), OpaquePointer(completed), OpaquePointer(cls)]
        args += [option(.SOCK_ADDR), OpaquePointer(address)]
        args += [option(.LISTENING_ADDRESS_REUSE), UInt32(1)]
        args += [option(.END)]
        daemon = withVaList(args) { list in
            MHD_start_daemon_va(flags, UInt16(options.port), nil, nil, acmAccessHandler, cls, list)
        }
        withExtendedLifetime((v4, v6)) {}
        if daemon == nil {
            throw HTTPServerError(description: "cannot listen on \(options.host):\(options.port) (address in use or not available)")
        }
    }

    /// Stops accepting connections; requests on open connections are still served.
    public func quiesce() {
        guard let daemon else { return }
        let fd = MHD_quiesce_daemon(daemon)
        if fd >= 0 { close(fd) }
    }

    /// Requests created and not yet finished (answered and sent, or dropped by the client).
    public var openExchanges: Int {
        lock.lock()
        defer { lock.unlock() }
        return open
    }

    /// Stops the daemon: closes every connection.
    public func stop() {
        guard let d = daemon else { return }
        daemon = nil
        MHD_stop_daemon(d)
    }

    fileprivate func opened() {
        lock.lock()
        open += 1
        lock.unlock()
    }

    fileprivate func finished() {
        lock.lock()
        open -= 1
        lock.unlock()
    }
}

/// Queues `response` on the connection; MHD copies the body.
private func send(_ response: HTTPResponse, on connection: OpaquePointer) -> MHD_Result {
    let r = response.body.withUnsafeBytes { raw in
        MHD_create_response_from_buffer(raw.count, UnsafeMutableRawPointer(mutating: raw.baseAddress), .RESPMEM_MUST_COPY)
    }
    guard let r else { return .NO }
    defer { MHD_destroy_response(r) }
    for (name, value) in response.headers { _ = MHD_add_response_header(r, name, value) }
    return MHD_queue_response(connection, UInt32(response.status), r)
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
        // First call: headers only.
        let exchange = HTTPExchange(
            connection: connection, method: method.map { String(cString: $0) } ?? "",
            path: url.map { String(cString: $0) } ?? "/", server: server)
        conCls.pointee = Unmanaged.passRetained(exchange).toOpaque()
        server.opened()
        if let length = MHD_lookup_connection_value(connection, .HEADER_KIND, "Content-Length")
            .flatMap({ Int(String(cString: $0)) }), length > server.options.maxBodyBytes
        {
            // Refuse now; MHD closes the connection instead of reading the body.
            exchange.inHandler = true
            let response = server.handler.bodyTooLarge(exchange)
            exchange.inHandler = false
            exchange.queued = true
            return send(response, on: connection)
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
    if let answer = exchange.takeAnswer() {
        exchange.queued = true
        return send(answer, on: connection)
    }
    if exchange.bodyTooLarge {
        exchange.inHandler = true
        let response = server.handler.bodyTooLarge(exchange)
        exchange.inHandler = false
        exchange.queued = true
        return send(response, on: connection)
    }
    exchange.inHandler = true
    let immediate = server.handler.handle(exchange)
    exchange.inHandler = false
    if let response = immediate ?? exchange.suspendUnlessAnswered() {
        exchange.queued = true
        return send(response, on: connection)
    }
    return .YES
}

/// MHD's completion callback: the request is over (answered, or the client went away). Releases the
/// exchange created on the first call.
func acmRequestCompleted(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?,
    conCls: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, toe: MHD_RequestTerminationCode
) {
    guard let cls, let state = conCls?.pointee else { return }
    conCls?.pointee = nil
    Unmanaged<HTTPExchange>.fromOpaque(state).release()
    Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue().finished()
}

/// libmicrohttpd's version string, e.g. "0.9.75", as the linked library reports it.
public let microhttpdVersion = String(cString: MHD_get_version())
