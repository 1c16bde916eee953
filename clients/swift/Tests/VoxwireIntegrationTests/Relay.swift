import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A loopback TCP relay in front of the server: the network between the client and the
/// server, for the tests to watch and to break.
///
/// It forwards bytes unchanged, one thread per direction per connection, and records the
/// head of every request it forwards (so a test can see what URLSession put on the wire).
/// Faults: ``drop(requestsContaining:)`` closes the connections carrying a request (a lost
/// network under a long GET), and ``loseNextResponse(toRequestContaining:)`` closes a
/// connection instead of forwarding the response to a request (the request arrived, its
/// answer never did: the client must resend).
final class Relay: @unchecked Sendable {  // state under `lock`
    /// Connect the client here.
    let url: URL

    private let listener: Int32
    private let targetPort: UInt16
    private let lock = NSLock()
    private var connections: [Connection] = []
    private var heads: [String] = []
    private var loseResponseTo: [String] = []
    private var closed = false

    final class Connection: @unchecked Sendable {  // state under the relay's lock
        let client: Int32
        let server: Int32
        var latestRequest = ""  // the request line of the latest request forwarded
        var scanTail = Data()  // the end of the previous reads, for a head split across reads
        var upBytes = 0  // client-to-server bytes so far
        var headOffset = -1  // stream offset of the latest head found
        var headIndex: Int?  // its index in the relay's heads
        var isClosed = false
        var pumpsRunning = 2

        init(client: Int32, server: Int32) {
            self.client = client
            self.server = server
        }
    }

    init(to target: URL) throws {
        guard let port = target.port else { throw TestFailure("no port in \(target)") }
        targetPort = UInt16(port)
        listener = try Socket.listen()
        url = URL(string: "http://127.0.0.1:\(try Socket.localPort(listener))")!
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit {
        close()
    }

    /// The heads of the requests forwarded so far (request line and headers), in order.
    var requestHeads: [String] {
        lock.lock()
        defer { lock.unlock() }
        return heads
    }

    /// Closes every open connection whose latest request line contains `text`.
    @discardableResult
    func drop(requestsContaining text: String) -> Int {
        lock.lock()
        let victims = connections.filter { !$0.isClosed && $0.latestRequest.contains(text) }
        lock.unlock()
        victims.forEach(shut)
        return victims.count
    }

    /// The next response to a request whose request line contains `text` is not forwarded:
    /// the connection is closed when its first byte arrives from the server.
    func loseNextResponse(toRequestContaining text: String) {
        lock.lock()
        loseResponseTo.append(text)
        lock.unlock()
    }

    func close() {
        lock.lock()
        let wasClosed = closed
        closed = true
        let open = connections
        lock.unlock()
        if wasClosed { return }
        _ = Glibc_or_Darwin.shutdown(listener, Socket.shutBoth)
        _ = Glibc_or_Darwin.close(listener)
        open.forEach(shut)
    }

    // MARK: the threads

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return  // closed
            }
            guard let server = try? Socket.connect(port: targetPort) else {
                _ = Glibc_or_Darwin.close(client)
                continue
            }
            let connection = Connection(client: client, server: server)
            lock.lock()
            if closed {
                lock.unlock()
                _ = Glibc_or_Darwin.close(client)
                _ = Glibc_or_Darwin.close(server)
                return
            }
            connections.append(connection)
            lock.unlock()
            Thread.detachNewThread { [self] in pump(connection, upstream: true) }
            Thread.detachNewThread { [self] in pump(connection, upstream: false) }
        }
    }

    private func pump(_ connection: Connection, upstream: Bool) {
        let from = upstream ? connection.client : connection.server
        let to = upstream ? connection.server : connection.client
        var buffer = [UInt8](repeating: 0, count: 65536)
        var cleanEnd = false
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if count == 0 { cleanEnd = true }
            if count <= 0 { break }
            let data = Data(buffer[0..<count])
            if upstream {
                noteRequests(in: data, on: connection)
            } else if shouldLoseResponse(on: connection) {
                break
            }
            if !Socket.sendAll(to, data) { break }
        }
        if cleanEnd {
            // A FIN is passed on as a FIN (half-close), as the network would: closing both
            // sides here could reset the connection under data the peer has not read yet.
            _ = Glibc_or_Darwin.shutdown(to, Socket.shutWrite)
        } else {
            shut(connection)
        }
        lock.lock()
        connection.pumpsRunning -= 1
        let last = connection.pumpsRunning == 0
        if last { connections.removeAll { $0 === connection } }
        lock.unlock()
        if last {
            _ = Glibc_or_Darwin.close(connection.client)
            _ = Glibc_or_Darwin.close(connection.server)
        }
    }

    private func shut(_ connection: Connection) {
        lock.lock()
        let already = connection.isClosed
        connection.isClosed = true
        lock.unlock()
        if already { return }
        _ = Glibc_or_Darwin.shutdown(connection.client, Socket.shutBoth)
        _ = Glibc_or_Darwin.shutdown(connection.server, Socket.shutBoth)
    }

    private func shouldLoseResponse(on connection: Connection) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let index = loseResponseTo.firstIndex(where: { connection.latestRequest.contains($0) })
        else { return false }
        loseResponseTo.remove(at: index)
        return true
    }

    /// Finds request heads in client-to-server bytes: `<METHOD> <target> HTTP/1.1` lines,
    /// with the headers up to the blank line. A request on a kept-alive connection follows
    /// the previous body directly (a JSON body has no newline), so the line is found from
    /// its end: back over the target to the method. The end of the previous reads is
    /// scanned again, so a head split across reads is found whole. (PCM bodies never
    /// spell out a request line.)
    private func noteRequests(in data: Data, on connection: Connection) {
        lock.lock()
        defer { lock.unlock() }
        let bytes = [UInt8](connection.scanTail + data)
        let base = connection.upBytes - connection.scanTail.count  // stream offset of bytes[0]
        let marker = Array(" HTTP/1.1\r\n".utf8)
        let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"].map { Array($0.utf8) }
        var at = 0
        while at + marker.count <= bytes.count {
            guard bytes[at..<at + marker.count].elementsEqual(marker) else {
                at += 1
                continue
            }
            defer { at += marker.count }
            var targetStart = at
            while targetStart > 0, bytes[targetStart - 1] != UInt8(ascii: " ") { targetStart -= 1 }
            let methodEnd = targetStart - 1
            guard methodEnd > 0,
                let method = methods.first(where: {
                    methodEnd >= $0.count && bytes[(methodEnd - $0.count)..<methodEnd].elementsEqual($0)
                })
            else { continue }
            let lineStart = methodEnd - method.count
            var headEnd = at
            while headEnd + 4 <= bytes.count, !bytes[headEnd..<headEnd + 4].elementsEqual([13, 10, 13, 10]) {
                headEnd += 1
            }
            let head = String(decoding: bytes[lineStart..<min(headEnd, bytes.count)], as: UTF8.self)
            let offset = base + lineStart
            if offset == connection.headOffset, let index = connection.headIndex {
                heads[index] = head  // seen before, maybe cut short: the longer view
            } else if offset > connection.headOffset {
                heads.append(head)
                connection.headOffset = offset
                connection.headIndex = heads.count - 1
                connection.latestRequest = firstLine(of: head)
            }
        }
        connection.upBytes += data.count
        connection.scanTail = Data(bytes.suffix(2048))
    }

    private func firstLine(of head: String) -> String {
        String(head.prefix(while: { $0 != "\r" }))
    }
}

/// The few socket calls the relay needs, for Glibc and Darwin.
enum Socket {
    #if canImport(Glibc)
        static let streamType = Int32(SOCK_STREAM.rawValue)
        static let shutBoth = Int32(SHUT_RDWR)
        static let shutWrite = Int32(SHUT_WR)
        static let sendFlags = Int32(MSG_NOSIGNAL)
    #else
        static let streamType = SOCK_STREAM
        static let shutBoth = SHUT_RDWR
        static let shutWrite = SHUT_WR
        static let sendFlags: Int32 = 0
    #endif

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        #if canImport(Darwin)
            address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
        #endif
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    static func listen() throws -> Int32 {
        let fd = socket(AF_INET, streamType, 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, Glibc_or_Darwin.listen(fd, 64) == 0 else {
            _ = Glibc_or_Darwin.close(fd)
            throw TestFailure("bind/listen: errno \(errno)")
        }
        return fd
    }

    static func localPort(_ fd: Int32) throws -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let result = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { throw TestFailure("getsockname: errno \(errno)") }
        return UInt16(bigEndian: address.sin_port)
    }

    static func connect(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, streamType, 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        #if canImport(Darwin)
            var on: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<Int32>.size))
        #endif
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc_or_Darwin.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            _ = Glibc_or_Darwin.close(fd)
            throw TestFailure("connect: errno \(errno)")
        }
        return fd
    }

    static func sendAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, sendFlags)
                if sent < 0 && errno == EINTR { continue }
                if sent <= 0 { return false }
                offset += sent
            }
            return true
        }
    }
}

#if canImport(Glibc)
    typealias Glibc_or_Darwin = GlibcFunctions
    enum GlibcFunctions {
        static func close(_ fd: Int32) -> Int32 { Glibc.close(fd) }
        static func shutdown(_ fd: Int32, _ how: Int32) -> Int32 { Glibc.shutdown(fd, how) }
        static func listen(_ fd: Int32, _ backlog: Int32) -> Int32 { Glibc.listen(fd, backlog) }
        static func connect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
            Glibc.connect(fd, address, length)
        }
    }
#else
    typealias Glibc_or_Darwin = DarwinFunctions
    enum DarwinFunctions {
        static func close(_ fd: Int32) -> Int32 { Darwin.close(fd) }
        static func shutdown(_ fd: Int32, _ how: Int32) -> Int32 { Darwin.shutdown(fd, how) }
        static func listen(_ fd: Int32, _ backlog: Int32) -> Int32 { Darwin.listen(fd, backlog) }
        static func connect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
            Darwin.connect(fd, address, length)
        }
    }
#endif
