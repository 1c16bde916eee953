import Foundation
import VoxwireClient
import XCTest

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The base of the integration tests: the shared server, a relay in front of it for each
/// test, and a client of the package (its public API only) that talks through the relay.
class IntegrationTestCase: XCTestCase {
    var serverURL: URL!
    var relay: Relay!
    var client: VoxwireClient!

    override func setUp() async throws {
        try await super.setUp()
        _ = ServerGuard.registered
        signal(SIGPIPE, SIG_IGN)  // the relay writes to sockets a client may have closed
        serverURL = try await TestServer.shared.url()
        relay = try Relay(to: serverURL)
        client = VoxwireClient(baseURL: relay.url, apiKey: TestServer.apiKey)
    }

    override func tearDown() async throws {
        relay?.close()
        relay = nil
        client = nil
        try await super.tearDown()
    }

    /// Fails with the server's log attached.
    func serverLog() async -> String {
        await TestServer.shared.logTail()
    }
}

// MARK: audio

enum Audio {
    static let rate = 16000
    /// 100 ms of PCM16 at 16 kHz: what a microphone tap hands the app, and the chunk size.
    static let chunkBytes = 3200

    /// The spoken fixture: the bundled Piper voice saying ``sentence``, 16 kHz PCM16 mono
    /// (made by `tests/make_swift_fixture.py`).
    static let sentence = "Please turn on the kitchen lights and close the garage door."

    static func spokenFixture() throws -> Data {
        var url = URL(fileURLWithPath: #filePath)
        url.deleteLastPathComponent()
        let wav = try Data(contentsOf: url.appendingPathComponent("Fixtures/kitchen_lights.wav"))
        return try pcm16(fromWAV: wav, expectRate: rate)
    }

    /// The samples of a mono PCM16 WAV file (its `data` chunk).
    static func pcm16(fromWAV wav: Data, expectRate: Int) throws -> Data {
        let bytes = [UInt8](wav)
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        guard bytes.count > 44, String(decoding: bytes[0..<4], as: UTF8.self) == "RIFF" else {
            throw TestFailure("not a WAV file")
        }
        var at = 12
        var format: (channels: Int, rate: Int, bits: Int)?
        while at + 8 <= bytes.count {
            let id = String(decoding: bytes[at..<at + 4], as: UTF8.self)
            let size = u32(at + 4)
            if id == "fmt " { format = (u16(at + 10), u32(at + 12), u16(at + 22)) }
            if id == "data" {
                guard let format, format == (1, expectRate, 16) else {
                    throw TestFailure("the fixture is not mono PCM16 at \(expectRate) Hz")
                }
                return Data(bytes[(at + 8)..<min(bytes.count, at + 8 + size)])
            }
            at += 8 + size + (size & 1)
        }
        throw TestFailure("no data chunk")
    }

    static func silence(ms: Int) -> Data { Data(count: rate * ms / 1000 * 2) }

    /// A signal that says where each sample belongs: sample `i` is `i % 30000 + 1` (never
    /// 0, so it stands out from the stream's silence). With the `loopback` responder at
    /// 16 kHz in and out the server plays it back bit for bit.
    static func ramp(samples count: Int, from start: Int = 0) -> [Int16] {
        (start..<start + count).map { Int16($0 % 30000 + 1) }
    }

    static func bytes(_ samples: [Int16], bigEndian: Bool = false) -> Data {
        var data = Data(capacity: samples.count * 2)
        for sample in samples {
            let value = UInt16(bitPattern: sample)
            let (first, second) = (UInt8(value & 0xFF), UInt8(value >> 8))
            data.append(contentsOf: bigEndian ? [second, first] : [first, second])
        }
        return data
    }

    /// `pcm` cut into 100 ms pieces.
    static func pieces(_ pcm: Data, bytes: Int = chunkBytes) -> [Data] {
        stride(from: 0, to: pcm.count, by: bytes).map { pcm.subdata(in: $0..<min(pcm.count, $0 + bytes)) }
    }

    static func peak(_ samples: ArraySlice<Int16>) -> Int {
        samples.reduce(0) { max($0, abs(Int($1))) }
    }
}

/// A microphone played from memory: `pcm` in 100 ms pieces, one every 100 ms, then
/// silence while `keepTalking` says so (a live microphone does not stop at the end of a
/// sentence), as an `AsyncStream` for ``VoxwireSession/sendAudioStream(_:format:)``.
func microphone(
    _ pcm: Data, counting sent: ByteCounter = ByteCounter(),
    thenSilenceWhile keepTalking: @escaping @Sendable () async -> Bool
) -> AsyncStream<Data> {
    AsyncStream { continuation in
        let task = Task {
            let clock = Pacer()
            for piece in Audio.pieces(pcm) {
                await clock.tick()
                sent.add(piece.count)
                continuation.yield(piece)
            }
            while await keepTalking(), !Task.isCancelled {
                await clock.tick()
                sent.add(Audio.chunkBytes)
                continuation.yield(Audio.silence(ms: 100))
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
    }
}

final class ByteCounter: @unchecked Sendable {  // state under `lock`
    private let lock = NSLock()
    private var total = 0

    func add(_ count: Int) {
        lock.lock()
        total += count
        lock.unlock()
    }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return total
    }
}

/// Real-time pacing, 100 ms per tick, without drift.
final class Pacer: @unchecked Sendable {  // used by one task
    private let start = Date()
    private var ticks = 0
    private let interval: TimeInterval

    init(interval: TimeInterval = 0.1) { self.interval = interval }

    func tick() async {
        ticks += 1
        let due = start.addingTimeInterval(Double(ticks) * interval)
        let wait = due.timeIntervalSinceNow
        if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1_000_000_000)) }
    }
}

// MARK: what the client receives

/// The session's events as they arrive, with their arrival times.
final class EventLog: @unchecked Sendable {  // state under `lock`
    private let lock = NSLock()
    private var entries: [(time: Date, event: VoxwireEvent)] = []
    private var ending: Result<Void, Error>?
    private var task: Task<Void, Never>?

    init(_ events: AsyncThrowingStream<VoxwireEvent, Error>) {
        task = Task { [weak self] in
            do {
                for try await event in events {
                    self?.append(event)
                }
                self?.end(.success(()))
            } catch {
                self?.end(.failure(error))
            }
        }
    }

    private func append(_ event: VoxwireEvent) {
        lock.lock()
        entries.append((Date(), event))
        lock.unlock()
    }

    private func end(_ result: Result<Void, Error>) {
        lock.lock()
        ending = result
        lock.unlock()
    }

    var events: [VoxwireEvent] {
        lock.lock()
        defer { lock.unlock() }
        return entries.map(\.event)
    }

    var types: [String] { events.map(\.type) }

    /// How the sequence ended (nil: not yet).
    var end: Result<Void, Error>? {
        lock.lock()
        defer { lock.unlock() }
        return ending
    }

    func all(_ type: String) -> [VoxwireEvent] { events.filter { $0.type == type } }

    func time(of event: VoxwireEvent) -> Date? {
        lock.lock()
        defer { lock.unlock() }
        return entries.first { $0.event == event }?.time
    }

    /// The `n`-th (1-based) event of `type`, waiting up to `timeout` seconds for it.
    @discardableResult
    func wait(
        for type: String, count n: Int = 1, timeout: TimeInterval = 30,
        file: StaticString = #filePath, line: UInt = #line
    ) async throws -> VoxwireEvent {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let found = all(type)
            if found.count >= n { return found[n - 1] }
            if end != nil { break }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        throw TestFailure("no \(type) #\(n) within \(timeout) s; got \(types)")
    }

    /// Waits for the sequence to end.
    func waitForEnd(timeout: TimeInterval = 10) async throws -> Result<Void, Error> {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let end { return end }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        throw TestFailure("the events did not end within \(timeout) s")
    }

    func cancel() { task?.cancel() }
}

/// The audio stream's frames as they arrive: the samples, when they came, how it ended.
final class StreamRecorder: @unchecked Sendable {  // state under `lock`
    private let lock = NSLock()
    private var allSamples: [Int16] = []
    private var arrivalLog: [(time: Date, total: Int)] = []
    private var rates: Set<Int> = []
    private var gapList: [AudioGap] = []
    private var ending: Result<Void, Error>?
    private var task: Task<Void, Never>?
    let started = Date()

    init(_ stream: AsyncThrowingStream<AudioFrame, Error>) {
        task = Task { [weak self] in
            do {
                for try await frame in stream {
                    self?.append(frame)
                }
                self?.end(.success(()))
            } catch {
                self?.end(.failure(error))
            }
        }
    }

    private func append(_ frame: AudioFrame) {
        lock.lock()
        allSamples += frame.samples
        arrivalLog.append((Date(), allSamples.count))
        rates.insert(frame.sampleRate)
        if let gap = frame.gapBefore { gapList.append(gap) }
        lock.unlock()
    }

    private func end(_ result: Result<Void, Error>) {
        lock.lock()
        ending = result
        lock.unlock()
    }

    var samples: [Int16] {
        lock.lock()
        defer { lock.unlock() }
        return allSamples
    }

    var arrivals: [(time: Date, total: Int)] {
        lock.lock()
        defer { lock.unlock() }
        return arrivalLog
    }

    var sampleRates: Set<Int> {
        lock.lock()
        defer { lock.unlock() }
        return rates
    }

    var gaps: [AudioGap] {
        lock.lock()
        defer { lock.unlock() }
        return gapList
    }

    var end: Result<Void, Error>? {
        lock.lock()
        defer { lock.unlock() }
        return ending
    }

    /// Samples received by `time`.
    func received(by time: Date) -> Int {
        arrivals.last { $0.time <= time }?.total ?? 0
    }

    /// Samples received since the first non-silent one.
    var loudSamples: Int {
        let all = samples
        guard let first = all.firstIndex(where: { $0 != 0 }) else { return 0 }
        return all.count - first
    }

    func wait(
        timeout: TimeInterval = 10, what: String = "the audio stream",
        until condition: (StreamRecorder) -> Bool
    ) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(self) { return }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw TestFailure(
            "timed out waiting for \(what) (\(samples.count) samples, end \(String(describing: end)))")
    }

    func waitForEnd(timeout: TimeInterval = 10) async throws -> Result<Void, Error> {
        try await wait(timeout: timeout, what: "the audio stream to end") { $0.end != nil }
        return end!
    }

    func cancel() { task?.cancel() }
}

/// Fails if a stream or the events ended with an error rather than cleanly.
func assertClean(
    _ end: Result<Void, Error>, _ what: String, file: StaticString = #filePath, line: UInt = #line
) {
    if case .failure(let error) = end { XCTFail("\(what): \(error)", file: file, line: line) }
}

/// Words of a transcript, lowercased, without punctuation.
func words(_ text: String) -> [String] {
    text.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber && $0 != "'" }).map(String.init)
}

/// The share of `expected`'s words found in `heard`.
func wordRecall(_ expected: String, in heard: String) -> Double {
    let want = words(expected)
    let got = Set(words(heard))
    return Double(want.filter(got.contains).count) / Double(max(1, want.count))
}

/// The value of a header in a request head the relay recorded (case-insensitive name).
func header(_ name: String, in head: String) -> String? {
    for line in head.components(separatedBy: "\r\n").dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        if line[..<colon].lowercased() == name.lowercased() {
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return nil
}

/// The `VoxwireError` `body` throws (or a failure naming what it threw instead).
func voxwireError(
    _ what: String, file: StaticString = #filePath, line: UInt = #line,
    _ body: () async throws -> Void
) async -> VoxwireError? {
    do {
        try await body()
        XCTFail("\(what): no error", file: file, line: line)
    } catch let error as VoxwireError {
        return error
    } catch {
        XCTFail("\(what): \(error), not a VoxwireError", file: file, line: line)
    }
    return nil
}
