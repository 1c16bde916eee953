import Foundation
import XCTest

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The real voxwire server (`run.py` from the checkout's `.venv`), once per test process.
///
/// It listens on an ephemeral loopback port (`--port 0`; the port is read from hypercorn's
/// "Running on" log line) with real models. It runs under a small `sh` guard that reads
/// the test process's pipe: when the tests finish, or the test process dies however it
/// dies, the pipe closes and the guard stops the server (SIGTERM, then its drain).
///
/// Set `VOXWIRE_REPO` to use another checkout; without its `.venv` the tests are skipped.
actor TestServer {
    static let shared = TestServer()

    /// The API key the server is started with (creation needs it).
    static let apiKey = "vx-swift-integration"

    private var started: Result<URL, Error>?
    private(set) var logURL: URL?

    static var repository: URL {
        if let path = ProcessInfo.processInfo.environment["VOXWIRE_REPO"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        // Tests/VoxwireIntegrationTests/TestServer.swift -> clients/swift -> the checkout
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<5 { url.deleteLastPathComponent() }
        return url
    }

    static var python: URL { repository.appendingPathComponent(".venv/bin/python") }

    /// The server's base URL, starting it the first time (and waiting for `/readyz`).
    func url() async throws -> URL {
        if let started { return try started.get() }
        guard FileManager.default.isExecutableFile(atPath: Self.python.path) else {
            throw XCTSkip("no \(Self.python.path): run `make test-swift` (it bootstraps .venv)")
        }
        let result: Result<URL, Error>
        do {
            result = .success(try await launch())
        } catch {
            result = .failure(error)
        }
        started = result
        return try result.get()
    }

    private func launch() async throws -> URL {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("voxwire-swift-tests-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let log = directory.appendingPathComponent("server.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        logURL = log

        // The guard: the server in the background; when stdin (our pipe) closes, stop it.
        // Foundation's Process starts children with the calling thread's signal mask, and
        // the test process blocks SIGTERM and SIGINT on its threads: the server would never
        // see them, so it unblocks them itself before running run.py. SIGKILL after 10 s.
        let script = """
            "$VOXWIRE_TEST_PYTHON" -c 'import runpy, signal, sys
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            sys.argv[0] = "run.py"
            runpy.run_path("run.py", run_name="__main__")' \
                --host 127.0.0.1 --port 0 --log-level info \
                >/dev/null 2>"$VOXWIRE_TEST_LOG" </dev/null &
            pid=$!
            stop() {
                kill -TERM $pid 2>/dev/null
                i=0
                while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
                kill -KILL $pid 2>/dev/null
                wait $pid
            }
            trap stop EXIT
            read -r _
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.currentDirectoryURL = Self.repository
        var environment = ProcessInfo.processInfo.environment
        environment["VOXWIRE_TEST_PYTHON"] = Self.python.path
        environment["VOXWIRE_TEST_LOG"] = log.path
        environment["VOXWIRE_API_KEY"] = Self.apiKey
        environment["VOXWIRE_PORT"] = nil
        environment["VOXWIRE_HOST"] = nil
        process.environment = environment
        let input = Pipe()
        process.standardInput = input
        try process.run()
        ServerGuard.shared.set(process, input)

        let deadline = Date().addingTimeInterval(120)
        let port = try await Self.poll(until: deadline, what: "the server's port (\(log.path))") {
            Self.boundPort(in: log)
        }
        let url = URL(string: "http://127.0.0.1:\(port)")!
        // /readyz: 503 while the models load, and briefly `overloaded` under load: keep asking.
        _ = try await Self.poll(until: deadline, what: "/readyz of \(url)") {
            await Self.isReady(url) ? true : nil
        }
        return url
    }

    /// The last lines of the server's log (for failure messages).
    func logTail(lines: Int = 40) -> String {
        guard let logURL, let text = try? String(contentsOf: logURL, encoding: .utf8) else { return "" }
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    private static func boundPort(in log: URL) -> Int? {
        guard let text = try? String(contentsOf: log, encoding: .utf8),
            let range = text.range(of: "Running on http://127.0.0.1:")
        else { return nil }
        return Int(text[range.upperBound...].prefix(while: { $0.isNumber }))
    }

    private static func isReady(_ url: URL) async -> Bool {
        var request = URLRequest(url: url.appendingPathComponent("readyz"))
        request.timeoutInterval = 5
        guard let (_, response) = try? await URLSession.shared.data(for: request) else { return false }
        return (response as? HTTPURLResponse)?.statusCode == 200
    }

    private static func poll<T>(
        until deadline: Date, what: String, _ probe: () async -> T?
    ) async throws -> T {
        while Date() < deadline {
            if let value = await probe() { return value }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        throw TestFailure("timed out waiting for \(what)")
    }
}

/// The guard process of the shared server, stopped once every test has run.
final class ServerGuard: NSObject, XCTestObservation, @unchecked Sendable {  // state under `lock`
    static let shared = ServerGuard()
    static let registered: Void = {
        XCTestObservationCenter.shared.addTestObserver(ServerGuard.shared)
    }()

    private let lock = NSLock()
    private var process: Process?
    private var input: Pipe?

    func set(_ process: Process, _ input: Pipe) {
        lock.lock()
        self.process = process
        self.input = input
        lock.unlock()
    }

    /// Closes the guard's pipe and waits (up to 20 s) for it and the server to exit.
    /// (`Process.waitUntilExit()` spins a run loop, which can deadlock here: poll instead.)
    func stop() {
        lock.lock()
        let process = self.process
        let input = self.input
        self.process = nil
        self.input = nil
        lock.unlock()
        guard let process, let input else { return }
        try? input.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    func testBundleDidFinish(_ testBundle: Bundle) {
        stop()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
